package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/nar"
)

// Disk-mode `.links` deduplication driven through real processes
// (docs/DESIGN.md §7; reference store-semantics.md §1, §2 and §8).

// linksMinSize is the default --links-min-size (Guix's 8192).
const linksMinSize = 8192

// linksTempPrefix starts the temporary links made in `.links`.
const linksTempPrefix = ".tmp-link-"

// linksPrunerEnv makes TestLinksPrunerHelper act as the collector of
// TestLinksManyProcesses: its value is the `.links` directory to prune.
const linksPrunerEnv = "STOREFS_TEST_LINKS_PRUNER"

// linksRaceFor is how long the optimisers race the pruner and the adders.
const linksRaceFor = 2500 * time.Millisecond

// linksStats is `storefs optimise --json`: the CLI encodes cas.DedupStats.
type linksStats = cas.DedupStats

func parseLinksStats(t testing.TB, out []byte) linksStats {
	t.Helper()
	var st linksStats
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("storefs optimise --json: %v in %q", err, out)
	}
	return st
}

// linksOptimise runs `storefs optimise --json`, which must exit 0 and count no
// errors.
func linksOptimise(t testing.TB, state string) linksStats {
	t.Helper()
	st := parseLinksStats(t, mustStorefs(t, state, "optimise", "--json").stdout)
	if st.Errors != 0 {
		t.Errorf("storefs optimise counted %d errors: %+v", st.Errors, st)
	}
	return st
}

// linksInitDisk creates a disk-mode store for /gnu/store with extra init
// flags.
func linksInitDisk(t testing.TB, flags ...string) string {
	t.Helper()
	state := filepath.Join(tempDir(t), "state")
	mustStorefs(t, state, append([]string{"init", "--mode", "disk", "--store-dir", "/gnu/store"}, flags...)...)
	return state
}

// linksAdd adds srcs in one `storefs add` and checks it printed want.
func linksAdd(t testing.TB, state string, flags, srcs, want []string) {
	t.Helper()
	got := mustStorefs(t, state, append(append([]string{"add"}, flags...), srcs...)...).lines()
	if !slices.Equal(got, want) {
		t.Fatalf("storefs add %v printed %q, want %q", flags, got, want)
	}
}

// linksStorePaths is `storefs path` of every source.
func linksStorePaths(t testing.TB, state string, srcs []string) []string {
	t.Helper()
	var out []string
	for _, src := range srcs {
		out = append(out, strings.TrimSpace(string(mustStorefs(t, state, "path", src).stdout)))
	}
	return out
}

// linksCheckExports checks `storefs export P` == the NAR of the source (nar.DumpPath).
func linksCheckExports(t testing.TB, state string, paths, srcs []string) {
	t.Helper()
	for i, p := range paths {
		var want bytes.Buffer
		if err := nar.DumpPath(&want, srcs[i]); err != nil {
			t.Fatalf("dumping %s: %v", srcs[i], err)
		}
		if got := mustStorefs(t, state, "export", p).stdout; !bytes.Equal(got, want.Bytes()) {
			t.Errorf("storefs export %s differs from the NAR of its source %s: %s", p, srcs[i], firstDiff(got, want.Bytes()))
		}
	}
}

func linksBases(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(p))
	}
	return out
}

func linksLstat(t testing.TB, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

// linksMode shows a st_mode's permission and special bits.
func linksMode(m uint32) string { return fmt.Sprintf("%#o", m&0o7777) }

// linksCheckCanonical checks every node of the items (base names under the
// real store dir): directories 0555, regular files 0444 or 0555, and mtime
// exactly 1 (0 ns) for all of them, symlinks included. A directory left
// writable, or with the time of a rename, is a deduplicator that did not
// restore what it changed.
func linksCheckCanonical(t testing.TB, store string, items []string) {
	t.Helper()
	bad := 0
	for _, b := range items {
		filepath.WalkDir(filepath.Join(store, b), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Errorf("walking %s: %v", p, err)
				return nil
			}
			st := linksLstat(t, p)
			var problem string
			switch st.Mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				if st.Mode&0o7777 != 0o555 {
					problem = "directory mode " + linksMode(st.Mode) + ", want 0555"
				}
			case syscall.S_IFREG:
				if m := st.Mode & 0o7777; m != 0o444 && m != 0o555 {
					problem = "file mode " + linksMode(st.Mode) + ", want 0444 or 0555"
				}
			}
			if st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
				problem = strings.TrimPrefix(problem+"; ", "; ") + fmt.Sprintf("mtime %d.%09d, want 1", st.Mtim.Sec, st.Mtim.Nsec)
			}
			if problem != "" {
				if bad++; bad <= 20 {
					t.Errorf("%s: %s", p, problem)
				}
			}
			return nil
		})
	}
	if bad > 20 {
		t.Errorf("... %d non-canonical nodes in all", bad)
	}
}

// linksCheckNoTemp fails the test if `.links` holds `.tmp-link-*` names.
func linksCheckNoTemp(t testing.TB, store string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(store, ".links"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reading .links: %v", err)
	}
	// the store dir is Nix's place for them; storefs must not use it either
	top, err := os.ReadDir(store)
	if err != nil {
		t.Fatalf("reading %s: %v", store, err)
	}
	for where, ents := range map[string][]fs.DirEntry{".links": ents, "the store dir": top} {
		var left []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), linksTempPrefix) {
				left = append(left, e.Name())
			}
		}
		if len(left) > 0 {
			t.Errorf("%d temporary links left in %s: %v", len(left), where, left[:min(len(left), 10)])
		}
	}
}

// linksNarKey is the `.links` name of the file or symlink at p: nix32 of the
// sha256 of its single-node NAR (`nix-hash --type sha256 --base32 p`).
func linksNarKey(t testing.TB, p string) string {
	t.Helper()
	h := sha256.New()
	if err := nar.DumpPath(h, p); err != nil {
		t.Fatalf("dumping %s: %v", p, err)
	}
	return nixbase32.EncodeToString(h.Sum(nil))
}

// linksEntryInfo is one name in `.links`.
type linksEntryInfo struct {
	name  string
	typ   uint32 // S_IFREG, S_IFLNK, ...
	ino   uint64
	nlink uint64
	size  int64
}

// linksRead lstats every name in <store>/.links (a missing .links is empty).
func linksRead(t testing.TB, store string) map[string]linksEntryInfo {
	t.Helper()
	dir := filepath.Join(store, ".links")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reading %s: %v", dir, err)
	}
	out := map[string]linksEntryInfo{}
	for _, e := range ents {
		st := linksLstat(t, filepath.Join(dir, e.Name()))
		out[e.Name()] = linksEntryInfo{name: e.Name(), typ: st.Mode & syscall.S_IFMT, ino: st.Ino, nlink: uint64(st.Nlink), size: st.Size}
	}
	return out
}

// linksFile is one regular file or symlink of an item.
type linksFile struct {
	path  string // real path
	rel   string // <item base>[/<rel>]
	typ   uint32
	exec  bool
	ino   uint64
	nlink uint64
	size  int64
	group string // hex sha256 of the contents (the target for a symlink) + exec bit
}

// linksItemFiles lists the regular files and symlinks of the items.
func linksItemFiles(t testing.TB, store string, items []string) []linksFile {
	t.Helper()
	var out []linksFile
	for _, b := range items {
		root := filepath.Join(store, b)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			st := linksLstat(t, p)
			f := linksFile{path: p, typ: st.Mode & syscall.S_IFMT, exec: st.Mode&0o100 != 0, ino: st.Ino, nlink: uint64(st.Nlink), size: st.Size}
			rel, _ := filepath.Rel(root, p)
			f.rel = b
			if rel != "." {
				f.rel = b + "/" + rel
			}
			var data []byte
			switch f.typ {
			case syscall.S_IFREG:
				if data, err = os.ReadFile(p); err != nil {
					return err
				}
			case syscall.S_IFLNK:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				data = []byte(target)
			default:
				t.Errorf("%s: unexpected file type %#o", p, f.typ)
				return nil
			}
			sum := sha256.Sum256(data)
			kind := "f"
			switch {
			case f.typ == syscall.S_IFLNK:
				kind = "l"
			case f.exec:
				kind = "x"
			}
			f.group = kind + " " + hex.EncodeToString(sum[:])
			out = append(out, f)
			return nil
		})
		if err != nil {
			t.Fatalf("walking %s: %v", root, err)
		}
	}
	return out
}

// linksCheckDeduplicated checks a store after an optimise that ran alone:
//   - every `.links` entry is a regular file named after its own contents
//     (a corrupted or dangling entry met by the optimise was replaced);
//   - every regular file of at least min bytes shares its inode with the
//     entry named after its contents, so that all files with the same
//     contents and exec bit share one inode;
//   - an inode is never shared by files of different contents or exec bits;
//   - smaller files and symlinks are never linked (nlink 1).
func linksCheckDeduplicated(t testing.TB, store string, items []string, min int64) {
	t.Helper()
	entries := linksRead(t, store)
	byIno := map[uint64]string{}
	for name, e := range entries {
		if strings.HasPrefix(name, linksTempPrefix) {
			continue // reported by linksCheckNoTemp
		}
		if e.typ != syscall.S_IFREG {
			t.Errorf(".links/%s is not a regular file (mode %#o) after optimise", name, e.typ)
			continue
		}
		if k := linksNarKey(t, filepath.Join(store, ".links", name)); k != name {
			t.Errorf(".links/%s holds the contents of %s", name, k)
		}
		byIno[e.ino] = name
	}
	groupIno := map[string]uint64{}
	inoGroup := map[uint64]string{}
	linked, bad := 0, 0
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for _, f := range linksItemFiles(t, store, items) {
		if f.typ != syscall.S_IFREG || f.size < min {
			if f.nlink != 1 {
				report("%s (%d bytes, type %#o) has %d links; files below %d bytes and symlinks are never linked", f.rel, f.size, f.typ, f.nlink, min)
			}
			continue
		}
		key := linksNarKey(t, f.path)
		switch name, ok := byIno[f.ino]; {
		case !ok:
			report("%s (%d bytes, key %s) shares its inode with no .links entry (nlink %d, entry present: %v)", f.rel, f.size, key, f.nlink, entries[key].name != "")
		case name != key:
			report("%s (key %s) is linked to .links/%s", f.rel, key, name)
		default:
			linked++
		}
		if ino, ok := groupIno[f.group]; ok && ino != f.ino {
			report("%s has inode %d, another file with the same contents and exec bit has %d", f.rel, f.ino, ino)
		}
		groupIno[f.group] = f.ino
		if g, ok := inoGroup[f.ino]; ok && g != f.group {
			report("%s shares inode %d with a file of other contents or exec bit (%s vs %s)", f.rel, f.ino, f.group, g)
		}
		inoGroup[f.ino] = f.group
	}
	if bad > 20 {
		t.Errorf("... %d problems in all", bad)
	}
	t.Logf("fully deduplicated: %d files of at least %d bytes, %d distinct contents, %d .links entries", linked, min, len(groupIno), len(entries))
}

// linksPool is the contents the items of TestLinksManyProcesses share:
// exactly 8192 bytes, 8191 (one short: never linked), then 8193 to 56 KiB.
func linksPool() [][]byte {
	r := newRNG(6000)
	pool := [][]byte{r.bytes(8192), r.bytes(8191), r.bytes(8193)}
	for range 29 {
		pool = append(pool, r.bytes(8192+r.intn(48<<10)))
	}
	return pool
}

// linksItem writes an item of TestLinksManyProcesses: common files (the same
// bytes with and without the exec bit, a file one byte below the threshold,
// small and empty files, a symlink), one file of its own so that the item is
// new, and 96 files drawn from pool (a fifth of them executable) in six
// directories, three of them nested, so that items share many files and
// duplicates sit side by side in one directory.
func linksItem(g gen, p string, pool, extra [][]byte) {
	g.dir(p)
	g.file(filepath.Join(p, "common/a"), pool[0], false)
	g.file(filepath.Join(p, "common/a-exec"), pool[0], true)
	g.file(filepath.Join(p, "common/b-8191"), pool[1], false)
	g.file(filepath.Join(p, "common/small"), []byte("small, shared by every item\n"), false)
	g.file(filepath.Join(p, "common/small-exec"), []byte("small, shared by every item\n"), true)
	g.file(filepath.Join(p, "common/empty"), nil, false)
	g.link(filepath.Join(p, "common/link"), "a")
	g.file(filepath.Join(p, "own"), g.r.bytes(9000+g.r.intn(9000)), false)
	for i, e := range extra {
		g.file(filepath.Join(p, fmt.Sprintf("extra-%d", i)), e, false)
	}
	for _, d := range []string{"d0", "d0/d1", "d0/d1/d2", "x", "x/y", "z"} {
		for j := range 16 {
			g.file(filepath.Join(p, d, fmt.Sprintf("f%02d", j)), pool[g.r.intn(len(pool))], g.r.intn(5) == 0)
		}
	}
}

// linksSeed writes an entry into .links as another process (or a crashed
// one) would have: mode 0444, or 0555 for exec, mtime 1.
func linksSeed(t testing.TB, store, name string, data []byte, exec bool) {
	t.Helper()
	p := filepath.Join(store, ".links", name)
	mode := os.FileMode(0o444)
	if exec {
		mode = 0o555
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, time.Unix(1, 0), time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
}

// linksKeyOf is the `.links` name of a regular file with these contents.
func linksKeyOf(t testing.TB, data []byte, exec bool) string {
	t.Helper()
	sum, err := nar.HashFile(exec, int64(len(data)), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return nixbase32.EncodeToString(sum[:])
}

// TestLinksPrunerHelper is not a test: it is the collector process of
// TestLinksManyProcesses, which runs the test binary again with
// STOREFS_TEST_LINKS_PRUNER=<.links dir>. Until its stdin closes it keeps
// deleting, in random order, entries of .links whose nlink is 1 (half of
// them each pass, as a collector pruning unused links would) and entries
// whatever their nlink (one in twenty each pass: deleting an entry never
// changes the items, it only loses sharing). Temporary links are left
// alone. It prints "links-pruner: ready" when it starts and its counts when
// it ends.
func TestLinksPrunerHelper(t *testing.T) {
	dir := os.Getenv(linksPrunerEnv)
	if dir == "" {
		t.Skip("the collector process of TestLinksManyProcesses; runs only with " + linksPrunerEnv + " set")
	}
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	fmt.Println("links-pruner: ready")
	limit := time.After(time.Minute)
	passes, single, shared := 0, 0, 0
	remove := func(p string) bool {
		err := os.Remove(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pruner: %v", err)
		}
		return err == nil
	}
	for {
		select {
		case <-stop:
			fmt.Printf("links-pruner: passes=%d nlink1=%d any-nlink=%d\n", passes, single, shared)
			return
		case <-limit:
			t.Fatalf("pruner: stdin not closed after a minute")
		default:
		}
		passes++
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("pruner: %v", err)
		}
		rand.Shuffle(len(ents), func(i, j int) { ents[i], ents[j] = ents[j], ents[i] })
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), linksTempPrefix) {
				continue
			}
			p := filepath.Join(dir, e.Name())
			var st syscall.Stat_t
			if err := syscall.Lstat(p, &st); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // another process replaced it meanwhile (nix #4957)
				}
				t.Fatalf("pruner: lstat %s: %v", p, err)
			}
			switch {
			case st.Nlink == 1 && rand.IntN(2) == 0:
				if remove(p) {
					single++
				}
			case rand.IntN(20) == 0:
				if remove(p) {
					shared++
				}
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// linksPruner is a running TestLinksPrunerHelper process.
type linksPruner struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	out   strings.Builder
	errb  bytes.Buffer
	done  chan struct{}
}

func linksStartPruner(ctx context.Context, t *testing.T, linksDir string) *linksPruner {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestLinksPrunerHelper$", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), linksPrunerEnv+"="+linksDir)
	pr := &linksPruner{cmd: cmd, lines: make(chan string, 100), done: make(chan struct{})}
	var err error
	if pr.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &pr.errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the pruner: %v", err)
	}
	ready := make(chan bool, 1)
	go func() {
		defer close(pr.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			pr.out.WriteString(line + "\n")
			if line == "links-pruner: ready" {
				ready <- true
			}
		}
	}()
	// The helper is the whole test binary: its TestMain builds storefs first.
	select {
	case <-ready:
	case <-pr.done:
		cmd.Wait()
		t.Fatalf("the pruner ended before it was ready: %v\nstdout:\n%s\nstderr:\n%s", cmd.ProcessState, pr.out.String(), pr.errb.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("the pruner is not ready after 90 s")
	}
	return pr
}

// stop closes the pruner's stdin and waits for it; it must exit 0.
func (pr *linksPruner) stop(t *testing.T) string {
	t.Helper()
	pr.stdin.Close()
	<-pr.done
	err := pr.cmd.Wait()
	out := pr.out.String()
	if err != nil {
		t.Errorf("the pruner: %v\nstdout:\n%s\nstderr:\n%s", err, out, pr.errb.String())
	}
	for _, l := range splitLines(out) {
		if strings.HasPrefix(l, "links-pruner: passes=") {
			return strings.TrimPrefix(l, "links-pruner: ")
		}
	}
	t.Errorf("the pruner printed no counts:\n%s", out)
	return ""
}

// linksRun is one finished storefs process of the race.
type linksRun struct {
	args           []string
	stdout, stderr string
	err            error
}

func linksRunProc(ctx context.Context, state string, args ...string) linksRun {
	cmd := storefsCmd(ctx, state, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return linksRun{args: args, stdout: out.String(), stderr: errb.String(), err: err}
}

// TestLinksManyProcesses races, on one disk-mode store, three `storefs
// optimise` processes (each run again and again for linksRaceFor), two
// `storefs add` processes adding new items that share content (with
// deduplication), and a collector process (TestLinksPrunerHelper) deleting
// `.links` entries. `.links` starts with entries for some of the adders'
// files that no store file uses (nlink 1), an entry of the wrong size, a
// dangling symlink under an entry's name (Guix bug#42023) and an entry for a
// file below the threshold. Every storefs process must exit 0; afterwards
// every item equals its source, verify passes, no temporary link is left,
// every directory is 0555 with mtime 1 and the store dir keeps its mode;
// one more optimise leaves the store fully deduplicated, and one after it
// finds nothing to do.
func TestLinksManyProcesses(t *testing.T) {
	dir := tempDir(t)
	pool := linksPool()
	// contents only the adders' items have; most get orphan .links entries
	adderPool := make([][]byte, 6)
	for i := range adderPool {
		adderPool[i] = newRNG(uint64(6100 + i)).bytes(8192 + 4096*i)
	}
	var initial []string
	for k := range 6 {
		p := filepath.Join(dir, "src", fmt.Sprintf("item-%d", k))
		linksItem(gen{t: t, r: newRNG(uint64(7000 + k))}, p, pool, nil)
		initial = append(initial, p)
	}
	adderSrcs := make([][]string, 2)
	for a := range adderSrcs {
		for k := range 2 {
			p := filepath.Join(dir, "src", fmt.Sprintf("adder-%d-%d", a, k))
			extra := [][]byte{adderPool[(2*a+k)%6], adderPool[(2*a+k+1)%6], adderPool[(2*a+k+3)%6]}
			linksItem(gen{t: t, r: newRNG(uint64(8000 + 10*a + k))}, p, pool, extra)
			adderSrcs[a] = append(adderSrcs[a], p)
		}
	}

	state := linksInitDisk(t)
	store := filepath.Join(state, "store")
	storeMode := linksLstat(t, store).Mode
	wantInitial := linksStorePaths(t, state, initial)
	wantAdder := [][]string{linksStorePaths(t, state, adderSrcs[0]), linksStorePaths(t, state, adderSrcs[1])}
	linksAdd(t, state, []string{"--no-dedup"}, initial, wantInitial)
	if n := len(linksRead(t, store)); n != 0 {
		t.Fatalf("add --no-dedup made %d .links entries", n)
	}

	// .links as a collector, a crashed process and Guix bug#42023 leave it
	if err := os.MkdirAll(filepath.Join(store, ".links"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		linksSeed(t, store, linksKeyOf(t, adderPool[i], false), adderPool[i], false)
	}
	linksSeed(t, store, linksKeyOf(t, pool[1], false), pool[1], false)        // below the threshold: never linked to
	linksSeed(t, store, linksKeyOf(t, pool[5], false), pool[5][:100], false)  // wrong size: replaced
	linksSeed(t, store, linksKeyOf(t, pool[6], true), []byte("not it"), true) // wrong size, exec
	dangling := filepath.Join(store, ".links", linksKeyOf(t, pool[7], false)) // dangling symlink: replaced
	if err := os.Symlink("../nonexistent/"+filepath.Base(dangling), dangling); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	pr := linksStartPruner(ctx, t, filepath.Join(store, ".links"))

	var mu sync.Mutex
	var runs []linksRun
	record := func(r linksRun) {
		mu.Lock()
		runs = append(runs, r)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(linksRaceFor)
	for range 3 {
		wg.Go(func() {
			for n := 0; n == 0 || time.Now().Before(deadline); n++ {
				record(linksRunProc(ctx, state, "optimise", "--json"))
			}
		})
	}
	addEnd := make([]time.Duration, 2)
	for a := range adderSrcs {
		wg.Go(func() {
			record(linksRunProc(ctx, state, append([]string{"add"}, adderSrcs[a]...)...))
			addEnd[a] = time.Since(start)
		})
	}
	wg.Wait()
	raced := time.Since(start)
	prunerCounts := pr.stop(t)

	var total linksStats
	optimises := 0
	for _, r := range runs {
		if r.err != nil {
			t.Errorf("storefs %s: %v\nstderr:\n%s", strings.Join(r.args, " "), r.err, r.stderr)
			continue
		}
		switch r.args[0] {
		case "optimise":
			optimises++
			st := parseLinksStats(t, []byte(r.stdout))
			if st.Errors != 0 {
				t.Errorf("a racing storefs optimise counted %d errors: %+v\nstderr:\n%s", st.Errors, st, r.stderr)
			}
			total.Add(st)
		case "add":
			i := slices.Index(adderSrcs[0], r.args[1])
			want := wantAdder[0]
			if i < 0 {
				want = wantAdder[1]
			}
			if got := splitLines(r.stdout); !slices.Equal(got, want) {
				t.Errorf("storefs %s printed %q, want %q", strings.Join(r.args, " "), got, want)
			}
		}
	}
	t.Logf("raced for %v: %d optimise runs (%+v), adds done after %v, pruner: %s", raced.Round(time.Millisecond), optimises, total, addEnd, prunerCounts)

	all := append(slices.Clone(wantInitial), append(wantAdder[0], wantAdder[1]...)...)
	allSrcs := append(slices.Clone(initial), append(adderSrcs[0], adderSrcs[1]...)...)
	if ls := listStore(t, state); !sameSet(ls, all) {
		t.Errorf("storefs ls = %v, want %v", ls, all)
	}
	if got := diskStoreEntries(t, state); !sameSet(got, linksBases(all)) {
		t.Errorf("store/ holds %v, want the valid items %v", got, linksBases(all))
	}
	linksCheckExports(t, state, all, allSrcs)
	checkVerify(t, state)
	checkTmpEmpty(t, state)
	linksCheckNoTemp(t, store)
	linksCheckCanonical(t, store, linksBases(all))
	if m := linksLstat(t, store).Mode; m != storeMode {
		t.Errorf("the store dir's mode changed from %s to %s", linksMode(storeMode), linksMode(m))
	}

	// one optimise alone deduplicates everything the race left undone
	st := linksOptimise(t, state)
	t.Logf("the final optimise: %+v", st)
	linksCheckDeduplicated(t, store, linksBases(all), linksMinSize)
	linksCheckNoTemp(t, store)
	linksCheckCanonical(t, store, linksBases(all))
	if again := linksOptimise(t, state); again.Linked != 0 || again.Canonical != 0 || again.BytesFreed != 0 {
		t.Errorf("a second optimise after the final one still did something: %+v", again)
	}
	linksCheckExports(t, state, all, allSrcs)
	checkVerify(t, state)
	checkTmpEmpty(t, state)
}

// nixLinksTree writes an item of TestLinksMatchNixOptimise: shared large
// files, the same bytes with and without the exec bit, files of exactly
// 8192 and 8191 bytes, small and empty files (both exec bits), symlinks with
// shared and own targets (some twice in one item), nested directories, and
// a random part.
func nixLinksTree(shared [][]byte) func(g gen, p string) {
	return func(g gen, p string) {
		g.dir(p)
		g.file(filepath.Join(p, "big"), shared[0], false)
		g.file(filepath.Join(p, "big-exec"), shared[0], true)
		g.file(filepath.Join(p, "lib/libx.so"), shared[1], true)
		g.file(filepath.Join(p, "lib/libx.so.copy"), shared[1], true)
		g.file(filepath.Join(p, "lib/libx.a"), shared[1], false)
		g.file(filepath.Join(p, "share/8192"), shared[2], false)
		g.file(filepath.Join(p, "share/8191"), shared[3], false)
		g.file(filepath.Join(p, "share/doc/README"), []byte("shared small file\n"), false)
		g.file(filepath.Join(p, "share/doc/README-exec"), []byte("shared small file\n"), true)
		g.file(filepath.Join(p, "empty"), nil, false)
		g.file(filepath.Join(p, "empty-exec"), nil, true)
		g.file(filepath.Join(p, "share/empty"), nil, false)
		g.file(filepath.Join(p, "own-big"), g.r.bytes(20000+g.r.intn(20000)), g.r.intn(2) == 0)
		g.file(filepath.Join(p, "own-small"), g.r.bytes(1+g.r.intn(100)), false)
		g.link(filepath.Join(p, "to-big"), "big")
		g.link(filepath.Join(p, "lib/libx.so.1"), "libx.so")
		g.link(filepath.Join(p, "lib/libx.so.2"), "libx.so")
		g.link(filepath.Join(p, "bin/env"), "/usr/bin/env")
		g.link(filepath.Join(p, "own-link"), fmt.Sprintf("own target %d", g.r.intn(1<<30)))
		g.randomDir(filepath.Join(p, "random"), 2)
	}
}

// nixOptimised is what `nix-store --optimise` did to an isolated Nix store
// holding some items, from its output and its .links.
type nixOptimised struct {
	store              string // the Nix store dir
	files              int    // files linked, as Nix printed
	miB                string // MiB freed, as Nix printed (2 decimals)
	regLinked          int    // of those files, the regular ones
	symLinked          int    // and the symlinks (Nix 2.8 links them, storefs never)
	regBytes, symBytes int64  // the bytes freed by each kind
	entries            map[string]linksEntryInfo
	reg                map[string]bool // the entries of regular files
}

// nixOptimise adds srcs to a fresh Nix store (auto-optimise off), checking
// that each gets the store path in paths, runs `nix-store --optimise` and
// accounts for what it reported freeing from its .links.
func nixOptimise(t testing.TB, nix *nixEnv, srcs, paths []string) nixOptimised {
	t.Helper()
	root := tempDir(t)
	url := storeURL(root, "/gnu/store")
	no := nixOptimised{store: filepath.Join(root, "store"), reg: map[string]bool{}}
	noAuto := []string{"--store", url, "--option", "auto-optimise-store", "false"}
	for i, src := range srcs {
		p := strings.TrimSpace(string(nix.run(nil, "nix-store", slices.Concat(noAuto, []string{"--add", src})...)))
		if p != paths[i] {
			t.Fatalf("nix-store --add %s = %s, storefs path gives %s", src, p, paths[i])
		}
	}
	if n := len(linksRead(t, no.store)); n != 0 {
		t.Fatalf("nix-store --add with auto-optimise-store false made %d .links entries", n)
	}
	_, stderr, err := nix.try(nil, "nix-store", slices.Concat(noAuto, []string{"--optimise"})...)
	if err != nil {
		t.Fatalf("nix-store --optimise: %v\nstderr:\n%s", err, stderr)
	}
	m := linksNixFreedRe.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("nix-store --optimise printed no %q line:\n%s", linksNixFreedRe, stderr)
	}
	no.miB = m[1]
	fmt.Sscan(m[2], &no.files)

	// Nix's counts from its store. Every item file was its own inode after
	// --add (a NAR cannot express hard links), and the optimise made each
	// first file of a content the entry (link(file, entry): counted neither
	// in filesLinked nor in the bytes freed) and replaced each later one by a
	// link to it (counted, with its st_size: a symlink's is its target's
	// length). So an entry with nlink n (itself and n-1 item files) stands for
	// n-1 links made and n-2 files linked. That holds for the symlink entries
	// too (Nix 2.8 links symlinks), which storefs never links: their n-2 are
	// taken out of Nix's count, and their (n-2)*size out of its bytes.
	no.entries = linksRead(t, no.store)
	for name, e := range no.entries {
		n := int(e.nlink) - 2
		if n < 0 {
			t.Errorf("Nix's .links/%s has nlink %d: not made from an item file", name, e.nlink)
			continue
		}
		switch e.typ {
		case syscall.S_IFREG:
			no.regLinked += n
			no.regBytes += int64(n) * e.size
			no.reg[name] = true
		case syscall.S_IFLNK:
			no.symLinked += n
			no.symBytes += int64(n) * e.size
		default:
			t.Errorf("Nix's .links/%s has type %#o", name, e.typ)
		}
	}
	if no.regLinked+no.symLinked != no.files {
		t.Errorf("Nix's .links accounts for %d regular files and %d symlinks linked, but Nix printed %d files", no.regLinked, no.symLinked, no.files)
	}
	if got := fmt.Sprintf("%.2f", float64(no.regBytes+no.symBytes)/(1<<20)); got != no.miB {
		t.Errorf("Nix's .links accounts for %d + %d bytes (%s MiB), but Nix printed %s MiB", no.regBytes, no.symBytes, got, no.miB)
	}
	t.Logf("nix-store --optimise: %s MiB freed by hard-linking %d files (%d regular files, %d bytes; %d symlinks, %d bytes; %d entries, %d of regular files)",
		no.miB, no.files, no.regLinked, no.regBytes, no.symLinked, no.symBytes, len(no.entries), len(no.reg))
	return no
}

var linksNixFreedRe = regexp.MustCompile(`([0-9]+\.[0-9]{2}) MiB freed by hard-linking ([0-9]+) files`)

// TestLinksMatchNixOptimise adds the same items to a storefs disk store
// with --links-min-size 0 (without deduplication) and to an isolated Nix
// store (auto-optimise off), optimises both, and compares: the files linked
// and bytes freed, the names of the regular-file .links entries, and which
// entry every regular file of every item ends up linked to. Nix 2.8 links
// symlinks too and storefs never does: they are taken out of Nix's counts.
func TestLinksMatchNixOptimise(t *testing.T) {
	nix := requireNix(t)
	dir := tempDir(t)
	r := newRNG(9000)
	shared := [][]byte{r.bytes(1<<20 + 3), r.bytes(300 << 10), r.bytes(8192), r.bytes(8191)}
	cases := []treeCase{
		{"links-a", 9001, nixLinksTree(shared)},
		{"links-b", 9002, nixLinksTree(shared)},
		{"links-c", 9003, nixLinksTree(shared)},
		{"bare-big", 9004, func(g gen, p string) { g.file(p, shared[0], false) }},
		{"bare-empty", 9005, bareFile(0, false)},
		{"bare-link", 9006, func(g gen, p string) { g.link(p, "big") }},
		{"mixed-1", 1, mixedTree},
		{"mixed-2", 2, mixedTree},
	}
	srcs := generate(t, dir, cases)

	// storefs
	state := linksInitDisk(t, "--links-min-size", "0")
	store := filepath.Join(state, "store")
	paths := linksStorePaths(t, state, srcs)
	linksAdd(t, state, []string{"--no-dedup"}, srcs, paths)
	sf := linksOptimise(t, state)

	no := nixOptimise(t, nix, srcs, paths)
	nixFiles, nixMiB, symLinked, regBytes, symBytes := no.files, no.miB, no.symLinked, no.regBytes, no.symBytes
	nixStore, nixEntries, nixReg := no.store, no.entries, no.reg
	t.Logf("storefs optimise: %+v", sf)

	if sf.Linked != nixFiles-symLinked {
		t.Errorf("storefs optimise linked %d files; Nix linked %d, %d of them symlinks, so want %d", sf.Linked, nixFiles, symLinked, nixFiles-symLinked)
	}
	if sf.BytesFreed != regBytes {
		t.Errorf("storefs optimise freed %d bytes; Nix freed %d bytes of regular files (%d more of symlinks)", sf.BytesFreed, regBytes, symBytes)
	}
	if got := fmt.Sprintf("%.2f", float64(sf.BytesFreed+symBytes)/(1<<20)); got != nixMiB {
		t.Errorf("storefs optimise freed %d bytes: with Nix's symlink bytes that is %s MiB, Nix printed %s MiB", sf.BytesFreed, got, nixMiB)
	}
	if sf.Canonical != len(nixReg) {
		t.Errorf("storefs optimise made %d new entries, Nix has %d entries of regular files", sf.Canonical, len(nixReg))
	}
	sfEntries := linksRead(t, store)
	var sfNames, nixNames []string
	for name, e := range sfEntries {
		if e.typ != syscall.S_IFREG {
			t.Errorf("storefs .links/%s has type %#o (storefs never links symlinks)", name, e.typ)
		}
		sfNames = append(sfNames, name)
	}
	for name := range nixReg {
		nixNames = append(nixNames, name)
	}
	slices.Sort(sfNames)
	slices.Sort(nixNames)
	if !slices.Equal(sfNames, nixNames) {
		t.Errorf("storefs .links names differ from Nix's regular-file entries:\nonly storefs: %v\nonly Nix: %v", linksMinus(sfNames, nixNames), linksMinus(nixNames, sfNames))
	}

	// file by file: the same entry on both sides (the links-oracle view)
	entryOf := func(entries map[string]linksEntryInfo) map[uint64]string {
		m := map[uint64]string{}
		for name, e := range entries {
			m[e.ino] = name
		}
		return m
	}
	sfIno, nixIno := entryOf(sfEntries), entryOf(nixEntries)
	nixFilesByRel := map[string]linksFile{}
	for _, f := range linksItemFiles(t, nixStore, linksBases(paths)) {
		nixFilesByRel[f.rel] = f
	}
	sfFiles := linksItemFiles(t, store, linksBases(paths))
	if len(sfFiles) != len(nixFilesByRel) {
		t.Errorf("storefs items have %d files and symlinks, Nix's %d", len(sfFiles), len(nixFilesByRel))
	}
	symlinks := 0
	for _, f := range sfFiles {
		nf, ok := nixFilesByRel[f.rel]
		if !ok {
			t.Errorf("%s: in storefs's item, not in Nix's", f.rel)
			continue
		}
		if f.typ == syscall.S_IFLNK {
			symlinks++
			if f.nlink != 1 {
				t.Errorf("storefs linked the symlink %s (nlink %d)", f.rel, f.nlink)
			}
			if _, ok := nixIno[nf.ino]; !ok {
				t.Errorf("Nix did not link the symlink %s", f.rel)
			}
			continue
		}
		want := linksNarKey(t, f.path)
		if got := sfIno[f.ino]; got != want {
			t.Errorf("storefs: %s is linked to .links/%q, want %s", f.rel, got, want)
		}
		if got := nixIno[nf.ino]; got != want {
			t.Errorf("Nix: %s is linked to .links/%q, want %s", f.rel, got, want)
		}
		if f.nlink != nf.nlink {
			t.Errorf("%s: nlink %d in storefs, %d in Nix", f.rel, f.nlink, nf.nlink)
		}
	}
	t.Logf("compared %d files and %d symlinks", len(sfFiles)-symlinks, symlinks)
	linksCheckCanonical(t, store, linksBases(paths))
	linksCheckNoTemp(t, store)
	linksCheckExports(t, state, paths, srcs)
	checkVerify(t, state)
}

// linksMinus is the strings of a (sorted) not in b (sorted).
func linksMinus(a, b []string) []string {
	var out []string
	for _, s := range a {
		if _, ok := slices.BinarySearch(b, s); !ok {
			out = append(out, s)
		}
	}
	return out
}

// TestLinksReadOnlyDirsRestored: one optimise deduplicates files in many
// nested read-only directories of two items (and two top-level files,
// whose directory is the store dir itself), including directories whose files
// sort on both sides of a subdirectory. Every file is linked to its entry,
// every directory of every item is 0555 with mtime exactly 1 afterwards,
// and the store dir, given Guix's 01775, keeps it.
func TestLinksReadOnlyDirsRestored(t *testing.T) {
	dir := tempDir(t)
	r := newRNG(9500)
	big, other := r.bytes(20000), r.bytes(9000)
	layout := func(g gen, p string) {
		g.dir(p)
		g.file(filepath.Join(p, "top"), big, false)
		g.file(filepath.Join(p, "a/f"), big, false)
		g.file(filepath.Join(p, "a/b/f"), big, false)
		g.file(filepath.Join(p, "a/b/c/f"), big, false)
		g.file(filepath.Join(p, "a/b/c/f-exec"), big, true)
		g.file(filepath.Join(p, "a/b/c/d/e/f"), other, false)
		g.file(filepath.Join(p, "a/b/c/d/e/g"), other, false)
		g.file(filepath.Join(p, "x/y/z/f"), big, false)
		g.file(filepath.Join(p, "x/y/z/o"), other, true)
		g.file(filepath.Join(p, "x/small"), []byte("small\n"), false)
		g.dir(filepath.Join(p, "x/empty-dir"))
		g.link(filepath.Join(p, "x/y/link"), "z/f")
		// files sorting before and after a subdirectory: the walk lists
		// them in two runs, which must not be two writers of one directory
		g.file(filepath.Join(p, "0-first"), big, false)
		for i := range 16 {
			g.file(filepath.Join(p, fmt.Sprintf("split/a%02d", i)), [][]byte{big, other}[i%2], false)
			g.file(filepath.Join(p, fmt.Sprintf("split/m/f%02d", i)), [][]byte{big, other}[i%2], false)
			g.file(filepath.Join(p, fmt.Sprintf("split/z%02d", i)), [][]byte{big, other}[i%2], i%4 == 1)
		}
	}
	srcs := generate(t, dir, []treeCase{
		{"nested-1", 1, layout},
		{"nested-2", 2, func(g gen, p string) { layout(g, p); g.file(filepath.Join(p, "own"), g.r.bytes(100), false) }},
		{"bare", 3, func(g gen, p string) { g.file(p, other, false) }},
		{"bare-2", 4, func(g gen, p string) { g.file(p, other, false) }},
	})
	state := linksInitDisk(t)
	store := filepath.Join(state, "store")
	paths := linksStorePaths(t, state, srcs)
	linksAdd(t, state, []string{"--no-dedup"}, srcs, paths)
	linksCheckCanonical(t, store, linksBases(paths))

	// the store dir as guix-daemon makes it (root:guixbuild 01775): never
	// chmodded, whatever the top-level file's deduplication does
	if err := os.Chmod(store, 0o1775); err != nil {
		t.Fatal(err)
	}
	storeMode := linksLstat(t, store).Mode

	// want: every file of at least 8192 bytes but the first of each content
	files := linksItemFiles(t, store, linksBases(paths))
	seen := map[string]bool{}
	wantLinked := 0
	for _, f := range files {
		if f.typ == syscall.S_IFREG && f.size >= linksMinSize {
			if seen[f.group] {
				wantLinked++
			}
			seen[f.group] = true
		}
	}
	st := linksOptimise(t, state)
	if st.Linked != wantLinked || st.Canonical != len(seen) {
		t.Errorf("storefs optimise linked %d files and made %d entries, want %d and %d: %+v", st.Linked, st.Canonical, wantLinked, len(seen), st)
	}
	linksCheckDeduplicated(t, store, linksBases(paths), linksMinSize)
	linksCheckCanonical(t, store, linksBases(paths))
	if m := linksLstat(t, store).Mode; m != storeMode {
		t.Errorf("the store dir's mode changed from %s to %s", linksMode(storeMode), linksMode(m))
	}
	linksCheckNoTemp(t, store)
	linksCheckExports(t, state, paths, srcs)
	checkVerify(t, state)
	checkTmpEmpty(t, state)
}
