package sheep

import (
	"context"
	"sync"
	"time"

	"github.com/gosheep/gosheep/api"
	"github.com/gosheep/gosheep/cluster"
	"github.com/gosheep/gosheep/proto"
)

// everywhereTimeout bounds how long a change waits for another member to
// apply it. It is longer than the fencing lease: a member that has not
// answered by then either heard from the leader (and applied the change)
// or has stopped serving I/O.
const everywhereTimeout = 5 * time.Second

// syncMembers asks every other member of the current epoch to answer once
// it has applied index and run its watchers, in parallel, each for at
// most everywhereTimeout. A member that does not answer is logged.
func (d *Daemon) syncMembers(ctx context.Context, index uint64) {
	var members []cluster.Member
	d.node.FSM().Read(func(s *cluster.State) {
		if cur := s.Current(); cur != nil {
			members = append(members, cur.Members...)
		}
	})
	var wg sync.WaitGroup
	for _, m := range members {
		if m.ID == d.node.ID() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, everywhereTimeout)
			defer cancel()
			if err := d.waitApplied(ctx, m.Addr.String(), index); err != nil {
				d.log.Warn("metadata change: member did not confirm it applied it", "node", m.ID, "index", index, "err", err)
			}
		}()
	}
	wg.Wait()
}

func (d *Daemon) waitApplied(ctx context.Context, addr string, index uint64) error {
	c, err := d.pool.Get(ctx, addr)
	if err != nil {
		return err
	}
	var r cluster.Result
	return c.Meta(ctx, proto.OpMeta, api.MetaRequest{WaitApplied: index}, &r)
}
