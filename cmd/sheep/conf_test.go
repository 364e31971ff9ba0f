package main

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMain lets the test binary stand in for sheep: run as a child with
// GOSHEEP_TEST_SHEEP_MAIN=1, it is `sheep` with the given arguments.
func TestMain(m *testing.M) {
	if os.Getenv("GOSHEEP_TEST_SHEEP_MAIN") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// sheep runs this binary as sheep and returns its output.
func sheepCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "GOSHEEP_TEST_SHEEP_MAIN=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var (
	helpFlagRE = regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`)
	confFlagRE = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)`)
)

// helpFlags are the flags `sheep --help` documents.
func helpFlags(t *testing.T) []string {
	t.Helper()
	out, err := sheepCmd(t, "--help")
	if err != nil {
		t.Fatalf("sheep --help: %v\n%s", err, out)
	}
	var flags []string
	for _, m := range helpFlagRE.FindAllStringSubmatch(out, -1) {
		if m[1] != "help" {
			flags = append(flags, m[1])
		}
	}
	if len(flags) < 10 {
		t.Fatalf("only %d flags parsed from sheep --help:\n%s", len(flags), out)
	}
	return flags
}

func readConf(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../scripts/sheep.conf.example")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every flag of sheep --help is documented in sheep.conf.example, and the
// example names no flag sheep does not have.
func TestConfExampleDocumentsEveryFlag(t *testing.T) {
	flags := helpFlags(t)
	conf := readConf(t)
	mentioned := map[string]bool{}
	for _, m := range confFlagRE.FindAllStringSubmatch(conf, -1) {
		mentioned[m[1]] = true
	}
	for _, f := range flags {
		if !mentioned[f] {
			t.Errorf("--%s (in sheep --help) is not documented in scripts/sheep.conf.example", f)
		}
	}
	for f := range mentioned {
		if !slices.Contains(flags, f) && f != "help" {
			t.Errorf("scripts/sheep.conf.example mentions --%s, which sheep does not have", f)
		}
	}
}

// The example's SHEEP_OPTS is split the way systemd splits it and parses.
func TestConfExampleOptsParse(t *testing.T) {
	var opts string
	sc := bufio.NewScanner(strings.NewReader(readConf(t)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "SHEEP_OPTS="); ok {
			opts = strings.Trim(v, `"`)
		}
	}
	if opts == "" {
		t.Fatal("no SHEEP_OPTS= line in scripts/sheep.conf.example")
	}
	args := strings.Fields(opts)
	// --help after the flags: parse them, start nothing.
	if out, err := sheepCmd(t, append(args, "--help")...); err != nil {
		t.Fatalf("sheep %s: %v\n%s", opts, err, out)
	}
	// The check can fail: a flag sheep lacks is refused.
	if out, err := sheepCmd(t, "--no-such-flag=1", "--help"); err == nil {
		t.Fatalf("an unknown flag was accepted:\n%s", out)
	}
}

// The unit reads the example's file and passes SHEEP_OPTS to sheep.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../scripts/systemd/sheep.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{
		"\nEnvironmentFile=/etc/gosheep/sheep.conf\n",
		"\nExecStart=/usr/local/bin/sheep $SHEEP_OPTS\n",
		"\nRestart=on-failure\n",
		"\nLimitNOFILE=",
		"\nStateDirectory=gosheep\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("sheep.service lacks %q", strings.TrimSpace(want))
		}
	}
	if !strings.Contains(readConf(t), "/etc/gosheep/sheep.conf") {
		t.Error("sheep.conf.example does not say where it goes (/etc/gosheep/sheep.conf)")
	}
}

// An even or negative voter count is refused before anything starts.
func TestVotersFlagChecked(t *testing.T) {
	for _, v := range []string{"2", "-1", "4"} {
		out, err := sheepCmd(t, "--dir", t.TempDir(), "--voters", v)
		if err == nil || !strings.Contains(out, "--voters "+v+": want an odd number") {
			t.Errorf("--voters %s: err %v, output:\n%s", v, err, out)
		}
	}
}
