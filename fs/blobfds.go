package fs

import (
	"container/list"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/cas"
)

// blobFDs shares one read-only descriptor per blob among the open files
// of the mount, and keeps the descriptors of up to max blobs no file has
// open any more, so that opening a file whose blob was read recently costs
// no openat and close in the server (an OPEN is on the path of every
// program start). The descriptors are raw (unix.Open, not os.Open): they
// are only spliced from or handed to the kernel for passthrough, never
// read through the Go poller, whose registration would cost two epoll
// calls per open.
//
// A blob is immutable and named by its content, so a kept descriptor is
// never stale; but it keeps a collected blob's blocks allocated, so a
// collection drops every idle descriptor (dropIdle) before it returns.
type blobFDs struct {
	blobs *cas.Blobs
	max   int

	mu   sync.Mutex
	m    map[cas.Key]*blobFD
	idle *list.List // of *blobFD with refs == 0, least recently used first
}

type blobFD struct {
	key  cas.Key
	fd   int
	refs int
	elem *list.Element // in idle, when refs == 0
}

func newBlobFDs(blobs *cas.Blobs, max int) *blobFDs {
	return &blobFDs{blobs: blobs, max: max, m: map[cas.Key]*blobFD{}, idle: list.New()}
}

// get returns a descriptor of blob k, held until put.
func (c *blobFDs) get(k cas.Key) (*blobFD, error) {
	c.mu.Lock()
	if b := c.m[k]; b != nil {
		if b.refs == 0 {
			c.idle.Remove(b.elem)
			b.elem = nil
		}
		b.refs++
		c.mu.Unlock()
		return b, nil
	}
	c.mu.Unlock()
	fd, err := unix.Open(c.blobs.Path(k), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.m[k]; b != nil { // opened meanwhile by another open
		unix.Close(fd)
		if b.refs == 0 {
			c.idle.Remove(b.elem)
			b.elem = nil
		}
		b.refs++
		return b, nil
	}
	b := &blobFD{key: k, fd: fd, refs: 1}
	c.m[k] = b
	return b, nil
}

// put releases a descriptor from get.
func (c *blobFDs) put(b *blobFD) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b.refs--; b.refs > 0 {
		return
	}
	if c.max <= 0 {
		delete(c.m, b.key)
		unix.Close(b.fd)
		return
	}
	b.elem = c.idle.PushBack(b)
	for c.idle.Len() > c.max {
		old := c.idle.Remove(c.idle.Front()).(*blobFD)
		delete(c.m, old.key)
		unix.Close(old.fd)
	}
}

// dropIdle closes the descriptors no open file holds.
func (c *blobFDs) dropIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.idle.Front(); e != nil; e = c.idle.Front() {
		old := c.idle.Remove(e).(*blobFD)
		delete(c.m, old.key)
		unix.Close(old.fd)
	}
}

// held is how many descriptors are open, idle ones included (tests).
func (c *blobFDs) held() (open, idle int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m), c.idle.Len()
}
