// Package iscsi is gosheep's iSCSI target (RFC 7143): every VDI is a
// target named iqn.2026-11.io.gosheep:<vdi> with the volume as LUN 0.
//
// # What comes from gotgt and what is ours
//
// github.com/gostor/gotgt v0.2.2 is a dependency, used only where it is
// sound: SCSI operation codes and SAM status values (pkg/api), sense keys,
// ASC/ASCQ codes, persistent-reservation service actions and types,
// INQUIRY bit and designator constants (pkg/scsi), and its key=value text
// encoder (pkg/util.MarshalKVText).
//
// Everything that runs is ours, because gotgt's versions cannot be fixed
// from outside: its listener binds ":port" and calls os.Exit on failure;
// its connection layer has no recover(), data races, panics reachable from
// the wire, executes one command at a time per session, ignores the
// initiator's MaxRecvDataSegmentLength, allocates ExpectedDataTransferLength
// (up to 4 GiB) from one PDU, has no CHAP, no digests, no target removal
// and leaks TSIHs; and its SBC layer has wrong WRITE SAME, residuals, UNMAP,
// GET LBA STATUS and persistent reservations, and panics on ORWRITE. So
// this package has its own listener, login/text/CHAP negotiation, session
// and connection layer with a CmdSN window and concurrent command
// execution, R2T/Data-Out handling (package pdu for the codec) and SCSI
// device server (package scsi).
//
// # Concurrency and limits
//
// Each connection has one reader goroutine (PDU decode, CmdSN ordering,
// Data-Out placement) and one goroutine per SCSI command. Writes to the
// socket are serialised by a mutex; StatSN is assigned in write order.
// Every length from the wire is checked before allocation: data segments
// against our MaxRecvDataSegmentLength, transfers against the LU's maximum
// transfer length (advertised in the Block Limits VPD page), and the bytes
// buffered for all commands of the server against Config.MaxBufferBytes.
// A panic in a connection is recovered, counted and ends that connection.
package iscsi
