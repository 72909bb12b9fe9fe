package cas

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/storefs/storefs/nar"
)

// ErrKeyMismatch: the bytes offered for a key do not hash to it.
var ErrKeyMismatch = errors.New("content does not match its blob key")

// Blobs is the blob area rooted at a directory.
type Blobs struct {
	dir string
}

// NewBlobs returns the blob area at dir. New blobs enter through a Batch
// staged on the same filesystem.
func NewBlobs(dir string) *Blobs { return &Blobs{dir: dir} }

// Dir is the blob area's root.
func (b *Blobs) Dir() string { return b.dir }

// Path is where the blob with key k lives.
func (b *Blobs) Path(k Key) string {
	s := k.String()
	return filepath.Join(b.dir, s[:2], s)
}

// Has reports whether the blob is present.
func (b *Blobs) Has(k Key) (bool, error) {
	_, err := os.Lstat(b.Path(k))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Open opens a blob for reading. A missing blob is an error satisfying
// errors.Is(err, fs.ErrNotExist).
func (b *Blobs) Open(k Key) (*os.File, error) { return os.Open(b.Path(k)) }

// umask is the process's file mode creation mask, read once at start-up
// (before any goroutine could race with the read).
var umask = func() os.FileMode {
	m := unix.Umask(0)
	unix.Umask(m)
	return os.FileMode(m)
}()

func blobMode(exec bool) os.FileMode {
	if exec {
		return 0o555
	}
	return 0o444
}

// Verify recomputes a blob's key from its content and mode.
func (b *Blobs) Verify(k Key) error {
	f, err := b.Open(k)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	got, err := nar.HashFile(st.Mode()&0o100 != 0, st.Size(), f)
	if err != nil {
		return err
	}
	if Key(got) != k {
		return fmt.Errorf("blob %s: %w (content hashes to %s)", k, ErrKeyMismatch, Key(got))
	}
	return nil
}

// Walk calls fn for every blob in the area (the name must parse as a Key).
func (b *Blobs) Walk(fn func(k Key, err error) error) error {
	fans, err := os.ReadDir(b.dir)
	if err != nil {
		return err
	}
	for _, fan := range fans {
		ents, err := os.ReadDir(filepath.Join(b.dir, fan.Name()))
		if err != nil {
			return err
		}
		for _, e := range ents {
			k, perr := ParseKey(e.Name())
			if perr == nil && e.Name()[:2] != fan.Name() {
				perr = fmt.Errorf("blob %s in the wrong fan-out directory %s", e.Name(), fan.Name())
			}
			if err := fn(k, perr); err != nil {
				return err
			}
		}
	}
	return nil
}

// Batch stages the new blobs of one item in a private directory and moves
// them into the blob area only on Commit, so that a failed add or import
// leaves the blob area exactly as it was. Its methods are safe for concurrent
// use.
type Batch struct {
	b   *Blobs
	dir string

	mu     sync.Mutex
	staged map[Key]bool
	made   map[Key]bool // committed by this batch
}

// NewBatch stages blobs in dir, which it creates.
func (b *Blobs) NewBatch(dir string) (*Batch, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &Batch{b: b, dir: dir, staged: map[Key]bool{}, made: map[Key]bool{}}, nil
}

func (bt *Batch) stagedPath(k Key) string { return filepath.Join(bt.dir, k.String()) }

// Path is where the blob can be read now: its staged copy, or the blob area.
func (bt *Batch) Path(k Key) string {
	bt.mu.Lock()
	ok := bt.staged[k]
	bt.mu.Unlock()
	if ok {
		return bt.stagedPath(k)
	}
	return bt.b.Path(k)
}

// Need reports whether k is neither present nor staged yet.
func (bt *Batch) Need(k Key) (bool, error) { return bt.NeedSize(k, -1) }

// NeedSize is Need for content of size bytes: a present file of another
// size is needed again, and staging it replaces that file on Commit. A
// power cut after a blob was renamed in, but before the sync that the add
// waits for, can leave it under its name with its bytes never written
// (delayed allocation writes the size only with the data); no valid item
// names it, and the next add of that content must not take it as present.
func (bt *Batch) NeedSize(k Key, size int64) (bool, error) {
	bt.mu.Lock()
	ok := bt.staged[k]
	bt.mu.Unlock()
	if ok {
		return false, nil
	}
	var st unix.Stat_t
	switch err := unix.Lstat(bt.b.Path(k), &st); {
	case err == unix.ENOENT:
		return true, nil
	case err != nil:
		return false, &os.PathError{Op: "lstat", Path: bt.b.Path(k), Err: err}
	}
	return size >= 0 && st.Size != size, nil
}

// PutBytes stages data, whose key the caller computed, unless it is
// present or staged. It reports whether it staged a new blob.
func (bt *Batch) PutBytes(k Key, exec bool, data []byte) (bool, error) {
	if need, err := bt.NeedSize(k, int64(len(data))); err != nil || !need {
		return false, err
	}
	// The key is known: write the staged blob under its final name and
	// mode at once (one create, no rename, no chmod), through a raw
	// descriptor: an *os.File would cost three more system calls per blob
	// (the poller's registration attempts) for a file that is written once.
	p := bt.stagedPath(k)
	switch err := writeNew(p, blobMode(exec), data); {
	case errors.Is(err, fs.ErrExist):
		return false, nil // staged by another worker meanwhile
	case err != nil:
		return false, err
	}
	bt.mu.Lock()
	bt.staged[k] = true
	bt.mu.Unlock()
	return true, nil
}

// rename is rename(2). os.Rename first stats newname (to refuse renaming
// over a directory, which cannot happen here): a wasted system call per blob.
func rename(oldname, newname string) error {
	if err := unix.Rename(oldname, newname); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// writeNew creates the file p (which must not exist) with mode and data.
// A umask that takes bits away from mode is undone with a chmod.
func writeNew(p string, mode os.FileMode, data []byte) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, uint32(mode))
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	for len(data) > 0 && err == nil {
		var n int
		n, err = unix.Write(fd, data)
		switch {
		case err == unix.EINTR:
			err = nil
		case err == nil && n == 0:
			err = io.ErrShortWrite
		}
		data = data[max(n, 0):]
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil && mode&^umask != mode {
		err = unix.Chmod(p, uint32(mode))
	}
	if err != nil {
		unix.Unlink(p)
		return &os.PathError{Op: "write", Path: p, Err: err}
	}
	return nil
}

// PutReader copies exactly size bytes from r, hashing them, and checks the
// result against want (the key computed beforehand, e.g. while hashing the
// source). It reports whether it staged a new blob.
func (bt *Batch) PutReader(want Key, exec bool, size int64, r io.Reader) (bool, error) {
	if need, err := bt.NeedSize(want, size); err != nil || !need {
		return false, err
	}
	w, err := bt.NewWriter(exec, size)
	if err != nil {
		return false, err
	}
	defer w.Abort()
	if _, err := io.CopyN(w, r, size); err != nil {
		return false, err
	}
	if got := w.Sum(); got != want {
		return false, fmt.Errorf("%w (the source changed while it was read?)", ErrKeyMismatch)
	}
	_, staged, err := w.Commit()
	return staged, err
}

func (bt *Batch) stage(f *os.File, k Key, exec bool) (bool, error) {
	name := f.Name()
	err := f.Chmod(blobMode(exec))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = rename(name, bt.stagedPath(k))
	}
	if err != nil {
		os.Remove(name)
		return false, err
	}
	bt.mu.Lock()
	bt.staged[k] = true
	bt.mu.Unlock()
	return true, nil
}

// Staged is the number of new blobs staged.
func (bt *Batch) Staged() int {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return len(bt.staged)
}

// Commit moves the staged blobs into the blob area and removes the staging
// directory. The caller makes them durable (syncfs) before registering
// anything that names them.
func (bt *Batch) Commit() error {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	made := map[string]bool{}
	for k := range bt.staged {
		dst := bt.b.Path(k)
		if d := filepath.Dir(dst); !made[d] {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			made[d] = true
		}
		if err := rename(bt.stagedPath(k), dst); err != nil {
			return fmt.Errorf("commit blob %s: %w", k, err)
		}
		delete(bt.staged, k)
		bt.made[k] = true
	}
	return os.RemoveAll(bt.dir)
}

// Made reports whether Commit moved the blob k into the area (so it was
// not found present there, and a collection that ran before cannot have
// taken it).
func (bt *Batch) Made(k Key) bool {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return bt.made[k]
}

// Abort drops everything staged.
func (bt *Batch) Abort() {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	bt.staged = map[Key]bool{}
	os.RemoveAll(bt.dir)
}

// Writer streams one new blob whose key is known only at the end.
type Writer struct {
	bt     *Batch
	f      *os.File
	h      hashWriter
	exec   bool
	size   int64
	n      int64
	sum    *Key
	closed bool
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

// NewWriter starts a blob of exactly size bytes.
func (bt *Batch) NewWriter(exec bool, size int64) (*Writer, error) {
	f, err := os.CreateTemp(bt.dir, "new-")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(nar.RegularPrefix(exec, size))
	return &Writer{bt: bt, f: f, h: h, exec: exec, size: size}, nil
}

func (w *Writer) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.size {
		return 0, fmt.Errorf("blob: more than the announced %d bytes", w.size)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Sum is the key of the bytes written; all size bytes must have been written.
func (w *Writer) Sum() Key {
	if w.sum == nil {
		var k Key
		w.h.Write(nar.RegularSuffix(w.size))
		copy(k[:], w.h.Sum(nil))
		w.sum = &k
	}
	return *w.sum
}

// Commit finishes the blob and stages it (or drops it when an equal blob is
// present or staged). It returns the key and whether it staged a new blob.
func (w *Writer) Commit() (Key, bool, error) {
	if w.closed {
		return Key{}, false, errors.New("blob: writer already closed")
	}
	if w.n != w.size {
		w.Abort()
		return Key{}, false, fmt.Errorf("blob: %d of %d bytes written", w.n, w.size)
	}
	k := w.Sum()
	need, err := w.bt.NeedSize(k, w.size)
	if err != nil || !need {
		w.Abort()
		return k, false, err
	}
	w.closed = true
	staged, err := w.bt.stage(w.f, k, w.exec)
	return k, staged, err
}

// Abort drops an uncommitted blob; it is a no-op after Commit.
func (w *Writer) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	w.f.Close()
	os.Remove(w.f.Name())
}
