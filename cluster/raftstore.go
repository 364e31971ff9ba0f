package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// boltStore is Raft's persistent log and stable store in one bbolt file.
// (raft-boltdb/v2 pins an incompatible go-metrics; this is the same idea in
// a few lines.) Log entries are gob-free: a fixed binary frame per entry.
type boltStore struct {
	db *bolt.DB
}

var (
	bucketLogs   = []byte("logs")
	bucketStable = []byte("stable")
	// errKeyNotFound is what raft expects from a StableStore for a missing key.
	errKeyNotFound = errors.New("not found")
)

func openBoltStore(path string) (*boltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketLogs); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bucketStable)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cluster: init %s: %w", path, err)
	}
	return &boltStore{db: db}, nil
}

func (b *boltStore) Close() error { return b.db.Close() }

func u64key(v uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, v)
	return k
}

func (b *boltStore) FirstIndex() (uint64, error) {
	var idx uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketLogs).Cursor().First(); k != nil {
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

func (b *boltStore) LastIndex() (uint64, error) {
	var idx uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketLogs).Cursor().Last(); k != nil {
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

// Entry frame: index u64, term u64, type u8, appended-at unix ns i64,
// data len u32, data, extensions len u32, extensions.
func encodeLog(l *raft.Log) []byte {
	buf := make([]byte, 0, 37+len(l.Data)+len(l.Extensions))
	buf = binary.BigEndian.AppendUint64(buf, l.Index)
	buf = binary.BigEndian.AppendUint64(buf, l.Term)
	buf = append(buf, byte(l.Type))
	buf = binary.BigEndian.AppendUint64(buf, uint64(l.AppendedAt.UnixNano()))
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(l.Data)))
	buf = append(buf, l.Data...)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(l.Extensions)))
	buf = append(buf, l.Extensions...)
	return buf
}

var errBadLog = errors.New("cluster: corrupt raft log entry")

func decodeLog(v []byte, l *raft.Log) error {
	if len(v) < 33 {
		return errBadLog
	}
	l.Index = binary.BigEndian.Uint64(v[0:])
	l.Term = binary.BigEndian.Uint64(v[8:])
	l.Type = raft.LogType(v[16])
	l.AppendedAt = time.Unix(0, int64(binary.BigEndian.Uint64(v[17:])))
	n := int(binary.BigEndian.Uint32(v[25:]))
	v = v[29:]
	if len(v) < n+4 {
		return errBadLog
	}
	l.Data = append([]byte(nil), v[:n]...)
	v = v[n:]
	m := int(binary.BigEndian.Uint32(v))
	v = v[4:]
	if len(v) < m {
		return errBadLog
	}
	l.Extensions = nil
	if m > 0 {
		l.Extensions = append([]byte(nil), v[:m]...)
	}
	return nil
}

func (b *boltStore) GetLog(index uint64, l *raft.Log) error {
	return b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketLogs).Get(u64key(index))
		if v == nil {
			return raft.ErrLogNotFound
		}
		return decodeLog(v, l)
	})
}

func (b *boltStore) StoreLog(l *raft.Log) error { return b.StoreLogs([]*raft.Log{l}) }

func (b *boltStore) StoreLogs(logs []*raft.Log) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLogs)
		for _, l := range logs {
			if err := bk.Put(u64key(l.Index), encodeLog(l)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *boltStore) DeleteRange(min, max uint64) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLogs).Cursor()
		for k, _ := c.Seek(u64key(min)); k != nil; k, _ = c.Next() {
			if binary.BigEndian.Uint64(k) > max {
				break
			}
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *boltStore) Set(key, val []byte) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStable).Put(key, val)
	})
}

func (b *boltStore) Get(key []byte) ([]byte, error) {
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketStable).Get(key)
		if v == nil {
			return errKeyNotFound
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

func (b *boltStore) SetUint64(key []byte, val uint64) error { return b.Set(key, u64key(val)) }

func (b *boltStore) GetUint64(key []byte) (uint64, error) {
	v, err := b.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, errBadLog
	}
	return binary.BigEndian.Uint64(v), nil
}

var (
	_ raft.LogStore    = (*boltStore)(nil)
	_ raft.StableStore = (*boltStore)(nil)
)
