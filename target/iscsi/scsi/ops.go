package scsi

import (
	gotgtapi "github.com/gostor/gotgt/pkg/api"
)

// SCSI operation codes: gotgt's api names where it has them.
var (
	opTestUnitReady  = byte(gotgtapi.TEST_UNIT_READY)
	opRequestSense   = byte(gotgtapi.REQUEST_SENSE)
	opRead6          = byte(gotgtapi.READ_6)
	opWrite6         = byte(gotgtapi.WRITE_6)
	opInquiry        = byte(gotgtapi.INQUIRY)
	opModeSelect6    = byte(gotgtapi.MODE_SELECT)
	opReserve6       = byte(gotgtapi.RESERVE)
	opRelease6       = byte(gotgtapi.RELEASE)
	opModeSense6     = byte(gotgtapi.MODE_SENSE)
	opStartStop      = byte(gotgtapi.START_STOP)
	opPreventAllow   = byte(gotgtapi.ALLOW_MEDIUM_REMOVAL)
	opReadCapacity10 = byte(gotgtapi.READ_CAPACITY)
	opRead10         = byte(gotgtapi.READ_10)
	opWrite10        = byte(gotgtapi.WRITE_10)
	opWriteVerify10  = byte(gotgtapi.WRITE_VERIFY)
	opVerify10       = byte(gotgtapi.VERIFY_10)
	opPrefetch10     = byte(gotgtapi.PRE_FETCH_10)
	opSyncCache10    = byte(gotgtapi.SYNCHRONIZE_CACHE)
	opWriteSame10    = byte(gotgtapi.WRITE_SAME)
	opUnmap          = byte(gotgtapi.UNMAP)
	opModeSelect10   = byte(gotgtapi.MODE_SELECT_10)
	opReserve10      = byte(gotgtapi.RESERVE_10)
	opRelease10      = byte(gotgtapi.RELEASE_10)
	opModeSense10    = byte(gotgtapi.MODE_SENSE_10)
	opPRIn           = byte(gotgtapi.PERSISTENT_RESERVE_IN)
	opPROut          = byte(gotgtapi.PERSISTENT_RESERVE_OUT)
	opRead16         = byte(gotgtapi.READ_16)
	opCompareWrite   = byte(gotgtapi.COMPARE_AND_WRITE)
	opWrite16        = byte(gotgtapi.WRITE_16)
	opOrWrite16      = byte(gotgtapi.ORWRITE_16)
	opWriteVerify16  = byte(gotgtapi.WRITE_VERIFY_16)
	opVerify16       = byte(gotgtapi.VERIFY_16)
	opPrefetch16     = byte(gotgtapi.PRE_FETCH_16)
	opSyncCache16    = byte(gotgtapi.SYNCHRONIZE_CACHE_16)
	opWriteSame16    = byte(gotgtapi.WRITE_SAME_16)
	opServiceIn16    = byte(gotgtapi.SERVICE_ACTION_IN)
	saReadCapacity16 = byte(gotgtapi.SAI_READ_CAPACITY_16)
	saGetLBAStatus   = byte(gotgtapi.SAI_GET_LBA_STATUS)
	opReportLUNs     = byte(gotgtapi.REPORT_LUNS)
	opMaintIn        = byte(gotgtapi.MAINT_PROTOCOL_IN)
	opRead12         = byte(gotgtapi.READ_12)
	opWrite12        = byte(gotgtapi.WRITE_12)
	opWriteVerify12  = byte(gotgtapi.WRITE_VERIFY_12)
	opVerify12       = byte(gotgtapi.VERIFY_12)
)

// Not named by gotgt.
const saReportSupportedOpcodes = 0x0c

// usage builds CDB usage data: every bit of every field examined, the
// control byte's NACA/link bits excluded.
func usage(op byte, n int, sa int) []byte {
	u := make([]byte, n)
	u[0] = op
	for i := 1; i < n-1; i++ {
		u[i] = 0xff
	}
	u[n-1] = 0x07
	if sa >= 0 {
		u[1] = 0xe0 | byte(sa)
		if op == opPRIn || op == opPROut {
			u[1] = byte(sa) // PR commands have no other bits in byte 1
		}
	}
	return u
}

func cdbLenOf(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 16
}

func (lu *LU) buildOps() {
	lu.ops = map[uint16]*opDesc{}
	add := func(name string, op byte, sa int, class int, noUA bool,
		prep func(*Cmd) *Result, exec func(ctxT, *Cmd, []byte) Result) {
		n := cdbLenOf(op)
		d := &opDesc{name: name, op: op, sa: sa, cdbLen: n, usage: usage(op, n, sa),
			class: class, noUA: noUA, prep: prep, exec: exec}
		key := uint16(op) << 8
		if sa >= 0 {
			key |= uint16(sa)
			lu.hasSA[op] = true
		}
		lu.ops[key] = d
		lu.order = append(lu.order, d)
	}
	const none = -1
	add("TEST UNIT READY", opTestUnitReady, none, classAllowed, false, nil, execTUR)
	add("REQUEST SENSE", opRequestSense, none, classAllowed, true, nil, execRequestSense)
	add("READ(6)", opRead6, none, classRead, false, prepRW, execRead)
	add("WRITE(6)", opWrite6, none, classWrite, false, prepRW, execWrite)
	add("INQUIRY", opInquiry, none, classAllowed, true, nil, execInquiry)
	add("MODE SELECT(6)", opModeSelect6, none, classWrite, false, prepParamList, execModeSelect)
	add("RESERVE(6)", opReserve6, none, classReserve, false, nil, execReserve6)
	add("RELEASE(6)", opRelease6, none, classReserve, false, nil, execRelease6)
	add("MODE SENSE(6)", opModeSense6, none, classRead, false, nil, execModeSense)
	add("START STOP UNIT", opStartStop, none, classRead, false, nil, execStartStop)
	add("PREVENT ALLOW MEDIUM REMOVAL", opPreventAllow, none, classRead, false, nil, execPreventAllow)
	add("READ CAPACITY(10)", opReadCapacity10, none, classAllowed, false, nil, execReadCapacity10)
	add("READ(10)", opRead10, none, classRead, false, prepRW, execRead)
	add("WRITE(10)", opWrite10, none, classWrite, false, prepRW, execWrite)
	add("WRITE AND VERIFY(10)", opWriteVerify10, none, classWrite, false, prepRW, execWrite)
	add("VERIFY(10)", opVerify10, none, classRead, false, prepVerify, execVerify)
	add("PRE-FETCH(10)", opPrefetch10, none, classRead, false, prepRW, execPrefetch)
	add("SYNCHRONIZE CACHE(10)", opSyncCache10, none, classWrite, false, prepRW, execSync)
	add("WRITE SAME(10)", opWriteSame10, none, classWrite, false, prepWriteSame, execWriteSame)
	add("UNMAP", opUnmap, none, classWrite, false, prepParamList, execUnmap)
	add("MODE SELECT(10)", opModeSelect10, none, classWrite, false, prepParamList, execModeSelect)
	add("RESERVE(10)", opReserve10, none, classReserve, false, nil, execReserve6)
	add("RELEASE(10)", opRelease10, none, classReserve, false, nil, execRelease6)
	add("MODE SENSE(10)", opModeSense10, none, classRead, false, nil, execModeSense)
	for _, sa := range []int{0, 1, 2, 3} {
		add("PERSISTENT RESERVE IN", opPRIn, sa, classPR, false, nil, execPRIn)
	}
	for _, sa := range []int{0, 1, 2, 3, 4, 5, 6} {
		add("PERSISTENT RESERVE OUT", opPROut, sa, classPR, false, prepParamList, execPROut)
	}
	add("READ(16)", opRead16, none, classRead, false, prepRW, execRead)
	add("COMPARE AND WRITE", opCompareWrite, none, classWrite, false, prepCompareWrite, execCompareWrite)
	add("WRITE(16)", opWrite16, none, classWrite, false, prepRW, execWrite)
	add("ORWRITE(16)", opOrWrite16, none, classWrite, false, prepRW, execOrWrite)
	add("WRITE AND VERIFY(16)", opWriteVerify16, none, classWrite, false, prepRW, execWrite)
	add("VERIFY(16)", opVerify16, none, classRead, false, prepVerify, execVerify)
	add("PRE-FETCH(16)", opPrefetch16, none, classRead, false, prepRW, execPrefetch)
	add("SYNCHRONIZE CACHE(16)", opSyncCache16, none, classWrite, false, prepRW, execSync)
	add("WRITE SAME(16)", opWriteSame16, none, classWrite, false, prepWriteSame, execWriteSame)
	add("READ CAPACITY(16)", opServiceIn16, int(saReadCapacity16), classAllowed, false, nil, execReadCapacity16)
	add("GET LBA STATUS", opServiceIn16, int(saGetLBAStatus), classRead, false, nil, execGetLBAStatus)
	add("REPORT LUNS", opReportLUNs, none, classAllowed, true, nil, execReportLUNs)
	add("REPORT SUPPORTED OPERATION CODES", opMaintIn, saReportSupportedOpcodes, classAllowed, false, nil, execRSOC)
	add("READ(12)", opRead12, none, classRead, false, prepRW, execRead)
	add("WRITE(12)", opWrite12, none, classWrite, false, prepRW, execWrite)
	add("WRITE AND VERIFY(12)", opWriteVerify12, none, classWrite, false, prepRW, execWrite)
	add("VERIFY(12)", opVerify12, none, classRead, false, prepVerify, execVerify)
}
