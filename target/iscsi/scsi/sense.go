package scsi

import (
	"context"
	"errors"

	"github.com/gosheep/gosheep/volume"
	gotgtapi "github.com/gostor/gotgt/pkg/api"
	gotgtscsi "github.com/gostor/gotgt/pkg/scsi"
)

// SAM status codes (gotgt's api values).
var (
	StatusGood                = gotgtapi.SAM_STAT_GOOD
	StatusCheckCondition      = gotgtapi.SAM_STAT_CHECK_CONDITION
	StatusConditionMet        = gotgtapi.SAM_STAT_CONDITION_MET
	StatusBusy                = gotgtapi.SAM_STAT_BUSY
	StatusReservationConflict = gotgtapi.SAM_STAT_RESERVATION_CONFLICT
	StatusTaskSetFull         = gotgtapi.SAM_STAT_TASK_SET_FULL
	StatusTaskAborted         = gotgtapi.SAM_STAT_TASK_ABORTED
)

// Sense keys (gotgt's values).
var (
	KeyNoSense        = gotgtscsi.NO_SENSE
	KeyNotReady       = gotgtscsi.NOT_READY
	KeyMediumError    = gotgtscsi.MEDIUM_ERROR
	KeyHardwareError  = gotgtscsi.HARDWARE_ERROR
	KeyIllegalRequest = gotgtscsi.ILLEGAL_REQUEST
	KeyUnitAttention  = gotgtscsi.UNIT_ATTENTION
	KeyDataProtect    = gotgtscsi.DATA_PROTECT
	KeyAbortedCommand = gotgtscsi.ABORTED_COMMAND
	KeyMiscompare     = gotgtscsi.MISCOMPARE
)

// ASC/ASCQ pairs as gotgt encodes them (ASC<<8 | ASCQ), plus the few that
// gotgt does not name.
type ascq = gotgtscsi.SCSISubError

var (
	ascNone                  = gotgtscsi.NO_ADDITIONAL_SENSE
	ascParamListLen          = gotgtscsi.ASC_PARAMETER_LIST_LENGTH_ERR
	ascInvalidOpcode         = gotgtscsi.ASC_INVALID_OP_CODE
	ascLBAOutOfRange         = gotgtscsi.ASC_LBA_OUT_OF_RANGE
	ascInvalidFieldCDB       = gotgtscsi.ASC_INVALID_FIELD_IN_CDB
	ascLUNNotSupported       = gotgtscsi.ASC_LUN_NOT_SUPPORTED
	ascInvalidFieldParams    = gotgtscsi.ASC_INVALID_FIELD_IN_PARMS
	ascInvalidReleasePR      = gotgtscsi.ASC_INVALID_RELEASE_OF_PERSISTENT_RESERVATION
	ascSavingNotSupported    = gotgtscsi.ASC_SAVING_PARMS_UNSUP
	ascRemovalPrevented      = gotgtscsi.ASC_MEDIUM_REMOVAL_PREVENTED
	ascInsufficientRegRes    = gotgtscsi.ASC_INSUFFICIENT_REGISTRATION_RESOURCES
	ascPowerOnReset          = gotgtscsi.ASC_POWERON_RESET
	ascModeParamsChanged     = gotgtscsi.ASC_MODE_PARAMETERS_CHANGED
	ascReservationsPreempted = gotgtscsi.ASC_RESERVATIONS_PREEMPTED
	ascReservationsReleased  = gotgtscsi.ASC_RESERVATIONS_RELEASED
	ascWriteProtect          = gotgtscsi.ASC_WRITE_PROTECT
	ascMiscompareVerify      = gotgtscsi.ASC_MISCOMPARE_DURING_VERIFY_OPERATION
	ascInternalFailure       = gotgtscsi.ASC_INTERNAL_TGT_FAILURE
	ascUnrecoveredRead       = gotgtscsi.ASC_UNRECOVERED_READ
	ascWriteError            = gotgtscsi.ASC_WRITE_ERROR
	ascNotReadyCause         = gotgtscsi.ASC_CAUSE_NOT_REPORTABLE
)

// Not named by gotgt.
const (
	ascCapacityChanged        ascq = 0x2a09
	ascRegistrationsPreempted ascq = 0x2a05
	ascInvalidFieldInIU       ascq = 0x0e03
	ascCommandsClearedByOther ascq = 0x2f00
	ascLogicalUnitReset       ascq = 0x2903
)

// Sense is fixed-format sense data (SPC-4 §4.5.3) in the making.
type Sense struct {
	Key       byte
	ASC       ascq
	Info      uint64 // INFORMATION field; valid when InfoValid
	InfoValid bool
	// Sense-key specific field pointer (SKSV set when FieldPtr is true).
	FieldPtr bool
	CD       bool // pointer is into the CDB (else the parameter list)
	BitPtr   int  // -1: no bit pointer
	BytePtr  uint16
}

// Bytes encodes 18 bytes of fixed-format sense.
func (s *Sense) Bytes() []byte {
	b := make([]byte, 18)
	b[0] = 0x70
	if s.InfoValid {
		b[0] |= 0x80
		v := s.Info
		if v > 0xffffffff {
			v = 0xffffffff
		}
		b[3], b[4], b[5], b[6] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	b[2] = s.Key & 0x0f
	b[7] = 10
	b[12], b[13] = byte(s.ASC>>8), byte(s.ASC)
	if s.FieldPtr {
		b[15] = 0x80
		if s.CD {
			b[15] |= 0x40
		}
		if s.BitPtr >= 0 {
			b[15] |= 0x08 | byte(s.BitPtr&7)
		}
		b[16], b[17] = byte(s.BytePtr>>8), byte(s.BytePtr)
	}
	return b
}

// Result is the outcome of a command: SCSI status, sense data for CHECK
// CONDITION, and the Data-In the device server would transfer (already
// cut to the allocation length; the transport applies EDTL).
type Result struct {
	Status byte
	Sense  []byte
	Data   []byte
	// Lent, instead of Data, is a read's data lent from the store (see
	// Cmd.Lend): the transport sends it and releases it.
	Lent *volume.Lent
}

// DataLen is the length of the data the result carries.
func (r *Result) DataLen() int {
	if r.Lent != nil {
		return r.Lent.N
	}
	return len(r.Data)
}

func good(data []byte) Result { return Result{Status: StatusGood, Data: data} }

func check(key byte, asc ascq) Result {
	s := Sense{Key: key, ASC: asc, BitPtr: -1}
	return Result{Status: StatusCheckCondition, Sense: s.Bytes()}
}

// invalidCDB reports INVALID FIELD IN CDB pointing at byte (and bit, or -1).
func invalidCDB(byteIdx, bit int) Result {
	s := Sense{Key: KeyIllegalRequest, ASC: ascInvalidFieldCDB, FieldPtr: true, CD: true, BitPtr: bit, BytePtr: uint16(byteIdx)}
	return Result{Status: StatusCheckCondition, Sense: s.Bytes()}
}

// invalidParam reports INVALID FIELD IN PARAMETER LIST pointing at byte.
func invalidParam(byteIdx, bit int) Result {
	s := Sense{Key: KeyIllegalRequest, ASC: ascInvalidFieldParams, FieldPtr: true, BitPtr: bit, BytePtr: uint16(byteIdx)}
	return Result{Status: StatusCheckCondition, Sense: s.Bytes()}
}

func lbaOutOfRange() Result { return check(KeyIllegalRequest, ascLBAOutOfRange) }

func writeProtected() Result { return check(KeyDataProtect, ascWriteProtect) }

func conflict() Result { return Result{Status: StatusReservationConflict} }

// InvalidFieldInIU is the answer when the transport's expected length
// disagrees with the CDB's (FCP-4 §9.4.2; libiscsi's residual tests).
func InvalidFieldInIU() Result { return check(KeyIllegalRequest, ascInvalidFieldInIU) }

// Aborted is CHECK CONDITION / ABORTED COMMAND, for transport failures.
func Aborted() Result { return check(KeyAbortedCommand, ascNone) }

// deviceError maps a volume.Device error to sense data.
func deviceError(err error, write bool) Result {
	switch {
	case errors.Is(err, volume.ErrOutOfRange):
		return lbaOutOfRange()
	case errors.Is(err, volume.ErrReadOnly):
		return writeProtected()
	case errors.Is(err, volume.ErrNoVolume):
		return check(KeyNotReady, ascNotReadyCause)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return check(KeyAbortedCommand, ascNone)
	case write:
		return check(KeyMediumError, ascWriteError)
	default:
		return check(KeyMediumError, ascUnrecoveredRead)
	}
}
