package sheep

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// eventConverge is the cluster event (cluster.Node.Broadcast) that brings
// every member's next converge pass forward.
const eventConverge = "gosheep-converge"

func runningPath(dir string) string { return filepath.Join(dir, "running") }

// markRunning creates the marker that exists while sheep runs on dir and
// reports whether it was there already: the previous run ended without
// a clean stop (kill -9, a crash, power loss).
func markRunning(dir string) (unclean bool, err error) {
	p := runningPath(dir)
	switch _, err := os.Stat(p); {
	case err == nil:
		unclean = true
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("running marker: %w", err)
	}
	if err := os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return false, fmt.Errorf("running marker: %w", err)
	}
	return unclean, nil
}

// onEvent handles events members broadcast (cluster.Config.OnEvent).
func (d *Daemon) onEvent(name string) {
	if name == eventConverge {
		d.kickConverge()
	}
}

// announceUnclean has every member compare its copies soon, after this
// node's crash: writes it was relaying when it died may have reached some
// copies and not others, and if it came back before it was missed, no
// epoch change brings a converge pass forward (nodeLeft). Objects are
// compared by their primaries, so every member must run a pass. It waits
// until this node is in the epoch, so that its copies are compared too.
func (d *Daemon) announceUnclean() {
	for d.ctx.Err() == nil {
		if v := d.views.View(); v != nil && v.Ring.Has(d.node.ID()) {
			if err := d.node.Broadcast(eventConverge); err != nil {
				d.log.Warn("asking members to compare copies after a crash", "err", err)
			} else {
				d.log.Info("previous run did not stop cleanly: members asked to compare copies")
			}
			return
		}
		sleepCtx(d.ctx, 500*time.Millisecond)
	}
}
