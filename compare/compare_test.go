package compare

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/store"
)

// The figures every strategy must give for makeTree's items, derived from
// the tree: exact counts everywhere, exact bytes where the filesystem
// allocates whole 4096-byte blocks (blockRule), and the totals equal to
// what du counts over each kept state dir.
func TestBuildFigures(t *testing.T) {
	tr := makeTree(t, t.TempDir())
	keep := filepath.Join(t.TempDir(), "keep")
	rs, err := Build(context.Background(), tr.paths, Options{Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	if got := strategiesOf(rs); !slices.Equal(got, All()) {
		t.Fatalf("results for %v; want %v in that order", got, All())
	}
	m := byStrategy(rs)
	const files = 9
	logical := int64(2*5000 + 4*20000 + 1<<20 + 1<<20 + 1)
	// files stored, and deduplicated: the other files of the sources
	stored := map[Strategy]int64{
		None:      9, // every file its own inode
		Links8192: 7, // mid-b and copy.bin share mid-a's inode; small-b is under 8192
		Links0:    6, // and small-b shares small-a's
		Blob:      6, // the distinct keys: small, mid, mid executable, empty, big, big-ins
		Chunk:     6,
	}
	for _, r := range rs {
		if r.Files != files || r.LogicalBytes != logical {
			t.Errorf("%s: %d files, %d logical bytes; want %d, %d", r.Strategy, r.Files, r.LogicalBytes, files, logical)
		}
		if r.FilesStored != stored[r.Strategy] || r.FilesDeduplicated != files-stored[r.Strategy] {
			t.Errorf("%s: %d files stored, %d deduplicated; want %d, %d", r.Strategy, r.FilesStored, r.FilesDeduplicated, stored[r.Strategy], files-stored[r.Strategy])
		}
		if r.Estimated || r.State != filepath.Join(keep, string(r.Strategy)) || r.BuildSeconds <= 0 {
			t.Errorf("%s: estimated %v, state %q, build %vs; want a real store in %s that took some time", r.Strategy, r.Estimated, r.State, r.BuildSeconds, filepath.Join(keep, string(r.Strategy)))
		}
		// The totals are du's, and the areas add up to them.
		if b, n := du(t, r.State); r.DiskBytes != b || r.Inodes != n {
			t.Errorf("%s: %d bytes on disk, %d inodes; du says %d, %d", r.Strategy, r.DiskBytes, r.Inodes, b, n)
		}
		var sum Usage
		for _, u := range r.Areas {
			sum.Bytes += u.Bytes
			sum.Inodes += u.Inodes
		}
		if sum.Bytes != r.DiskBytes || sum.Inodes != r.Inodes {
			t.Errorf("%s: the areas add up to %+v, not %d bytes and %d inodes", r.Strategy, sum, r.DiskBytes, r.Inodes)
		}
		// Metadata: the registry, the manifests and the .links directory.
		meta := r.Areas["registry.db"].Bytes + r.Areas["manifests"].Bytes
		if r.Strategy.linksMin() >= 0 {
			meta += allocated(t, filepath.Join(r.State, "store", ".links"))
		}
		if r.Areas["registry.db"].Inodes != 1 || r.MetadataBytes != meta {
			t.Errorf("%s: metadata %d bytes; want %d (registry %+v, manifests %+v)", r.Strategy, r.MetadataBytes, meta, r.Areas["registry.db"], r.Areas["manifests"])
		}
		if want := float64(r.DiskBytes) / float64(m[None].DiskBytes); r.Ratio == nil || *r.Ratio != want {
			t.Errorf("%s: ratio %v; want %v", r.Strategy, r.Ratio, want)
		}
	}
	// The three disk stores differ only in their items' files and .links.
	for _, s := range []Strategy{Links8192, Links0} {
		for _, a := range []string{"registry.db", "other"} {
			if m[s].Areas[a] != m[None].Areas[a] {
				t.Errorf("%s: %s %+v; want none's %+v", s, a, m[s].Areas[a], m[None].Areas[a])
			}
		}
	}
	// chunk: the distinct chunks of big and big-ins; the insertion costs
	// only a few chunks.
	bigChunks, insChunks := chunksOf(t, tr.big), chunksOf(t, tr.bigIns)
	distinct := map[cas.Key]int64{}
	for _, c := range append(slices.Clone(bigChunks), insChunks...) {
		distinct[c.Key] = int64(c.Size)
	}
	if extra := len(distinct) - len(bigChunks); extra < 1 || extra > 4 {
		t.Errorf("one inserted byte added %d chunks to big's %d; want 1 to 4", extra, len(bigChunks))
	}
	if m[Chunk].Chunks != int64(len(distinct)) {
		t.Errorf("chunk: %d chunks stored; want %d (big's and big-ins's, each once)", m[Chunk].Chunks, len(distinct))
	}
	if got, bound := m[Chunk].Areas["chunks"].Bytes, int64(1<<20+4*chunk.MaxSize); got > bound {
		t.Errorf("chunk: big and big-ins take %d bytes in chunks/; want at most one file and four chunks, %d", got, bound)
	}
	// Stored bytes: the sizes of the distinct contents kept (chunk mode:
	// the small files' and the chunks'), deduplicated the rest.
	var chunkData int64
	for _, size := range distinct {
		chunkData += size
	}
	storedBytes := map[Strategy]int64{
		None:      logical,
		Links8192: logical - 2*20000,
		Links0:    logical - 2*20000 - 5000,
		Blob:      5000 + 2*20000 + 1<<20 + 1<<20 + 1,
		Chunk:     5000 + 2*20000 + chunkData,
	}
	for _, r := range rs {
		if r.StoredBytes != storedBytes[r.Strategy] || r.DeduplicatedBytes != logical-storedBytes[r.Strategy] {
			t.Errorf("%s: %d bytes stored, %d deduplicated; want %d, %d", r.Strategy, r.StoredBytes, r.DeduplicatedBytes, storedBytes[r.Strategy], logical-storedBytes[r.Strategy])
		}
	}
	if m[Chunk].DiskBytes >= m[Blob].DiskBytes {
		t.Errorf("chunk: %d bytes on disk, not fewer than blob's %d", m[Chunk].DiskBytes, m[Blob].DiskBytes)
	}

	if !blockRule(t, tr) {
		return
	}
	S, M, L, Li := roundup(5000), roundup(20000), roundup(1<<20), roundup(1<<20+1)
	// none: store/, pkg/ and pkg/sub/, 8 files in pkg, copy.bin, the link
	// (inline: no block); no .links.
	none := Usage{Bytes: 3*4096 + 2*S + 3*M + L + Li + M, Inodes: 3 + 8 + 1 + 1}
	// links-8192: mid-b and copy.bin are mid-a's inode; .links appears.
	l8192 := Usage{Bytes: none.Bytes - 2*M + 4096, Inodes: none.Inodes - 2 + 1}
	// links-0: small-b is small-a's inode too (empty is alone: no saving).
	l0 := Usage{Bytes: l8192.Bytes - S, Inodes: l8192.Inodes - 1}
	kSmall, kMid, kMidX := key(t, false, tr.small), key(t, false, tr.mid), key(t, true, tr.mid)
	kBig, kIns := key(t, false, tr.big), key(t, false, tr.bigIns)
	var chunkNames []string
	var chunkBytes int64
	for k, size := range distinct {
		chunkNames = append(chunkNames, k.String())
		chunkBytes += roundup(size)
	}
	want := map[Strategy]map[string]Usage{
		None:      {"store": none},
		Links8192: {"store": l8192},
		Links0:    {"store": l0},
		Blob:      {"blobs": fanoutUsage(keyNames(kSmall, kMid, kMidX, kBig, kIns), S+2*M+L+Li)},
		Chunk: {
			"blobs":     fanoutUsage(keyNames(kSmall, kMid, kMidX), S+2*M),
			"manifests": fanoutUsage(keyNames(kBig, kIns), roundup(chunk.ManifestSize(len(bigChunks)))+roundup(chunk.ManifestSize(len(insChunks)))),
			"chunks":    fanoutUsage(chunkNames, chunkBytes),
		},
	}
	for s, areas := range want {
		for a, u := range areas {
			if got := m[s].Areas[a]; got != u {
				t.Errorf("%s: %s takes %+v; want %+v", s, a, got, u)
			}
		}
	}
	// The relation in plain words: links-0 saves the duplicates' blocks,
	// less the .links directory.
	if got, want := m[None].DiskBytes-m[Links0].DiskBytes, 2*M+S-4096; got != want {
		t.Errorf("none - links-0 = %d bytes; want small-b, mid-b and copy.bin less .links: %d", got, want)
	}

	// Analysing the none store (read-only items, as in /nix/store)
	// estimates each strategy's content areas exactly as they were built.
	est, an, err := Analyse(context.Background(), filepath.Join(m[None].State, "store"), AnalyseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if an.Items != 2 || an.Files != files || an.Inodes != files || an.Skipped != 0 {
		t.Errorf("analysis %+v; want 2 items, %d files and inodes", an, files)
	}
	for _, e := range est {
		b := m[e.Strategy]
		if !e.Estimated || e.Files != b.Files || e.LogicalBytes != b.LogicalBytes || e.FilesStored != b.FilesStored || e.FilesDeduplicated != b.FilesDeduplicated || e.Chunks != b.Chunks ||
			e.StoredBytes != b.StoredBytes || e.DeduplicatedBytes != b.DeduplicatedBytes {
			t.Errorf("%s: estimated %+v; want the built store's counts %+v", e.Strategy, e, b)
		}
		for a, u := range e.Areas {
			if b.Areas[a] != u {
				t.Errorf("%s: %s estimated at %+v; built %+v", e.Strategy, a, u, b.Areas[a])
			}
		}
	}
}

func keyNames(keys ...cas.Key) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.String())
	}
	return out
}

func strategiesOf(rs []Result) []Strategy {
	var out []Strategy
	for _, r := range rs {
		out = append(out, r.Strategy)
	}
	return out
}

// Several strategies built at once give the figures of one at a time, and
// the temp stores are gone afterwards.
func TestBuildJobsAndTemp(t *testing.T) {
	tr := makeTree(t, t.TempDir())
	tmp := t.TempDir()
	one, err := Build(context.Background(), tr.paths, Options{TempDir: tmp, Jobs: 1})
	if err != nil {
		t.Fatal(err)
	}
	all, err := Build(context.Background(), tr.paths, Options{TempDir: tmp, Jobs: 5})
	if err != nil {
		t.Fatal(err)
	}
	for i := range one {
		a, b := one[i], all[i]
		if a.State != "" || b.State != "" {
			t.Errorf("%s: state %q, %q without Keep", a.Strategy, a.State, b.State)
		}
		a.BuildSeconds, b.BuildSeconds, a.Ratio, b.Ratio = 0, 0, nil, nil
		a.Areas, b.Areas = nil, nil // registry.db may grow differently; the totals below may not
		if a.Strategy != b.Strategy || a.FilesStored != b.FilesStored || a.Chunks != b.Chunks || a.Inodes != b.Inodes {
			t.Errorf("jobs 5 gave %+v; jobs 1 %+v", b, a)
		}
	}
	leftovers(t, tmp)
}

// leftovers fails the test if dir is not empty.
func leftovers(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}

// Bad sources fail before anything is built, naming the cause, and leave
// nothing in the temp dir; --keep refuses a store that is already there.
func TestBuildBadInput(t *testing.T) {
	tr := makeTree(t, t.TempDir())
	fifoTree := filepath.Join(t.TempDir(), "with-fifo")
	write(t, filepath.Join(fifoTree, "f"), []byte("x"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(fifoTree, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	hidden := filepath.Join(t.TempDir(), ".hidden")
	write(t, hidden, []byte("x"), 0o644)
	tmp := t.TempDir()
	for _, c := range []struct {
		paths []string
		want  string
		is    error
	}{
		{[]string{tr.paths[0], filepath.Join(tr.dir, "missing")}, "missing: no such file or directory", os.ErrNotExist},
		{[]string{fifoTree}, "pipe: unsupported file type (named pipe)", store.ErrUnsupported},
		{[]string{hidden}, `invalid store path name ".hidden"`, nil},
	} {
		_, err := Build(context.Background(), c.paths, Options{TempDir: tmp})
		if err == nil || !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("Build(%v): %v; want an error with %q", c.paths, err, c.want)
		}
		leftovers(t, tmp)
	}
	keep := t.TempDir()
	if err := os.Mkdir(filepath.Join(keep, "blob"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Build(context.Background(), tr.paths, Options{Keep: keep, Strategies: []Strategy{None, Blob}})
	if err == nil || !strings.Contains(err.Error(), "blob already exists") {
		t.Errorf("Build with a kept blob store already there: %v; want it refused", err)
	}
	if _, err := os.Stat(filepath.Join(keep, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("none was built although the command was refused: %v", err)
	}
}

// A temp dir that fills up fails the build with ENOSPC, says where the
// stores were built, and leaves nothing there.
func TestBuildFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a full disk is simulated with a small tmpfs, which only root can mount")
	}
	tr := makeTree(t, t.TempDir())
	small := t.TempDir()
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(small, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", small, err)
		}
	})
	for _, s := range []Strategy{None, Chunk} {
		_, err := Build(context.Background(), tr.paths, Options{TempDir: small, Strategies: []Strategy{s}})
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "compare "+string(s)+":") || !strings.Contains(err.Error(), "set TMPDIR or --keep elsewhere") {
			t.Errorf("%s on a full disk: %v; want ENOSPC, the strategy and where to make room", s, err)
		}
		leftovers(t, small)
	}
}

func TestParseStrategies(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Strategy
		err  string
	}{
		{"", All(), ""},
		{"blob,chunk", []Strategy{Blob, Chunk}, ""},
		{" links-0 , none", []Strategy{Links0, None}, ""},
		{"blob,zstd", nil, `unknown strategy "zstd"`},
		{"blob,,chunk", nil, `unknown strategy ""`},
		{"blob,blob", nil, `strategy "blob" given twice`},
	} {
		got, err := ParseStrategies(c.in)
		if (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) || !slices.Equal(got, c.want) {
			t.Errorf("ParseStrategies(%q) = %v, %v; want %v, %q", c.in, got, err, c.want, c.err)
		}
	}
}
