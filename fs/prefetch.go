package fs

import (
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
	"github.com/storefs/storefs/chunk"
	"github.com/storefs/storefs/registry"
)

// A cold read of many small files is a chain of small device reads, one
// per FUSE round trip: the directory entry, inode and first pages of the
// next file's blob. A native tree has locality (a directory's inodes share
// inode-table blocks); the blob area, keyed by hashes, has none. When the
// files of a directory are read in listing order (cat, tar, cp -r, find
// -exec), the prefetcher reads the blobs of the files after them on a few
// goroutines, so that the device gets several of those reads at once, in
// a window that doubles with each file read in order, as the kernel's
// readahead does within a file. A read out of order (a program importing
// modules) ends the run and prefetches nothing.
//
// Jobs beyond what the queue holds are dropped: a prefetch is only a hint.
type prefetcher struct {
	mu      sync.Mutex
	queue   []func()
	workers int
	max     int // workers at most
	limit   int // queued jobs at most
}

const (
	prefetchWorkers = 8
	prefetchQueue   = 1024
	// filesAheadMax bounds the window of blobs read ahead in a directory.
	filesAheadMax = 64
	// prefetchBytes is how much of a blob is read ahead: what the first
	// READs of a file ask for (the mount's readahead is 1 MiB as root).
	prefetchBytes = 1 << 20
)

func newPrefetcher(workers, limit int) *prefetcher {
	return &prefetcher{max: workers, limit: limit}
}

// do queues job, starting a worker if fewer than max run; workers exit
// when the queue is empty, so an idle mount runs none.
func (p *prefetcher) do(job func()) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) >= p.limit {
		return
	}
	p.queue = append(p.queue, job)
	if p.workers < p.max {
		p.workers++
		go p.work()
	}
}

func (p *prefetcher) work() {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		job := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		p.mu.Unlock()
		job()
	}
}

// prefetchBlob opens blob k (kept among the idle shared descriptors for
// the READ to come) and starts reading its first bytes into the cache.
func (r *Root) prefetchBlob(k cas.Key, size int64) {
	r.pre.do(func() {
		b, err := r.fds.get(k)
		if err != nil {
			return // the READ reports it
		}
		unix.Fadvise(b.fd, 0, min(size, prefetchBytes), unix.FADV_WILLNEED)
		r.fds.put(b)
		r.prefetched.Add(1)
	})
}

// readRun is a directory's sequential-read state: the index of the file
// last read from its start, how many such reads came in listing order,
// and the index up to which blobs were queued.
type readRun struct {
	mu    sync.Mutex
	last  int
	run   int
	ahead int
}

// fileReadStarts is told that the kernel reads the file named name of d
// from its start (its pages were not cached). Two such reads in listing
// order start a readahead of the next files' blobs.
func (d *dirNode) fileReadStarts(name string) {
	r := d.root
	if r.pre == nil {
		return
	}
	dir, errno := d.dir()
	if errno != 0 {
		return
	}
	es := dir.Entries
	i := searchEntries(es, name)
	if i < 0 {
		return
	}
	rr := &d.reads
	rr.mu.Lock()
	// entries between two files read in order may be directories,
	// symlinks or empty files, which have no READ
	if i > rr.last && i-rr.last <= 8 {
		rr.run++
	} else {
		rr.run = 0
		rr.ahead = i
	}
	rr.last = i
	if rr.run == 0 {
		rr.mu.Unlock()
		return
	}
	from := max(rr.ahead, i) + 1
	to := min(i+min(2<<rr.run, filesAheadMax), len(es)-1)
	rr.ahead = max(rr.ahead, to)
	rr.mu.Unlock()
	for j := from; j <= to; j++ {
		n := es[j].Node
		if n.Type != registry.TypeRegular || n.Size == 0 || (r.o.Chunks != nil && chunk.Chunked(n.Size)) {
			continue
		}
		r.prefetchBlob(cas.Key(n.Key), n.Size)
	}
}

// searchEntries is the index of the entry named name in es (sorted by
// name), or -1.
func searchEntries(es []registry.Entry, name string) int {
	i, ok := slices.BinarySearchFunc(es, name, func(e registry.Entry, name string) int { return strings.Compare(e.Name, name) })
	if !ok {
		return -1
	}
	return i
}
