package integration

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gosheep/gosheep/api"
	gcluster "github.com/gosheep/gosheep/cluster"
)

// TestGossipEncryption: nodes sharing a key form a cluster; a node with
// another key cannot join it.
func TestGossipEncryption(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	c := newCluster(t, 2, "--encrypt", key)
	c.format("2")
	// A third node with the wrong key.
	bad := &node{t: t, ip: strings.TrimSuffix(c.nodes[0].ip, "1") + "9", log: &bytes.Buffer{}}
	bad.args = []string{"--listen", bad.ip + ":7000", "--dir", t.TempDir(), "--join", c.nodes[0].ip + ":7002",
		"--encrypt", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{8}, 32))}
	bad.start()
	t.Cleanup(bad.kill)
	bad.waitListening()
	time.Sleep(5 * time.Second)
	for _, m := range c.nodes[0].state(t).Members {
		if m.Addr.Addr().String() == bad.ip {
			t.Fatalf("a node with the wrong gossip key joined: %+v", m)
		}
	}
	t.Logf("verified: encrypted cluster of 2 formed; a node with another key stayed out")
}

// TestCHAPPerTarget sets one-way CHAP on a VDI's target cluster-wide:
// initiators without the secret are refused on every node.
func TestCHAPPerTarget(t *testing.T) {
	needTool(t, "iscsi-inq")
	c := newCluster(t, 2)
	c.format("2")
	vid := createVDI(t, c.nodes[0], "sec", 16<<20)
	// Every node exports the target first, so a refused login below means
	// CHAP, not a target that is not there yet.
	for _, n := range c.nodes {
		waitFor(t, "target exported on "+n.ip, 30*time.Second, func() bool {
			return exec.Command("iscsi-inq", iscsiURL(n, "sec")).Run() == nil
		})
	}
	chap := &gcluster.CHAP{User: "alice", Secret: "s3cret-s3cret"}
	if _, err := c.nodes[1].meta(t, api.MetaRequest{Propose: &gcluster.Command{Op: gcluster.CmdSetCHAP, VID: vid, CHAP: chap}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		plain := iscsiURL(n, "sec")
		withCreds := strings.Replace(plain, "iscsi://", "iscsi://alice%s3cret-s3cret@", 1)
		waitFor(t, "CHAP enforced on "+n.ip, 30*time.Second, func() bool {
			return exec.Command("iscsi-inq", plain).Run() != nil
		})
		if out, err := exec.Command("iscsi-inq", withCreds).CombinedOutput(); err != nil {
			t.Fatalf("login with the CHAP secret on %s: %v\n%s", n.ip, err, out)
		}
		wrong := strings.Replace(plain, "iscsi://", "iscsi://alice%wrong-wrong-wrong@", 1)
		if exec.Command("iscsi-inq", wrong).Run() == nil {
			t.Fatalf("wrong secret accepted on %s", n.ip)
		}
	}
	t.Logf("verified: CHAP set once is enforced by every node's target")
}

// TestMetricsScrape scrapes a live node's /metrics, lints it with promlint
// and checks the key series move with real I/O.
func TestMetricsScrape(t *testing.T) {
	c := newCluster(t, 1)
	c.format("1")
	n := c.nodes[0]
	createVDI(t, n, "vol", 16<<20)
	qemuIO(t, nbdURL(n, "vol"), "write -P 1 0 4M", "read -P 1 0 4M")
	url := fmt.Sprintf("http://%s:9100/metrics", n.ip)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %s", url, resp.Status)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "gosheep_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"gosheep_requests_total", "gosheep_request_duration_seconds", "gosheep_written_bytes_total",
		"gosheep_store_used_bytes", "gosheep_cluster_epoch", "gosheep_cluster_members", "gosheep_recovery_active"} {
		if _, ok := fams[want]; !ok {
			t.Errorf("metric %s missing", want)
		}
	}
	if nbdWritten := counterIn(fams, "gosheep_written_bytes_total", "frontend", "nbd"); nbdWritten < 4<<20 {
		t.Fatalf("gosheep_written_bytes_total{frontend=nbd} = %v after writing 4 MiB", nbdWritten)
	}
	t.Logf("verified: %d metric families, lint clean, NBD bytes counted", len(fams))
}
