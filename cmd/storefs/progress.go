package main

import (
	"fmt"
	"sync/atomic"

	"github.com/schollz/progressbar/v3"

	"github.com/storefs/storefs/store"
)

// progress draws a byte bar with a file count on stderr when it is a TTY;
// otherwise it is inert. Scripts get clean output either way.
type progress struct {
	bar   *progressbar.ProgressBar
	desc  string
	files atomic.Int64
	total int
}

func newProgress(g *globals, desc string, totalBytes int64, totalFiles int) *progress {
	p := &progress{desc: desc, total: totalFiles}
	if !g.interactive() {
		return p
	}
	if totalBytes <= 0 {
		totalBytes = -1
	}
	p.bar = progressbar.NewOptions64(totalBytes,
		progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	)
	return p
}

func (p *progress) hooks() *store.Progress {
	if p.bar == nil {
		return nil
	}
	return &store.Progress{
		Bytes: func(n int64) { p.bar.Add64(n) },
		Files: func(n int) {
			if f := p.files.Add(int64(n)); f%256 == 0 || int(f) == p.total {
				p.bar.Describe(p.describe(f))
			}
		},
	}
}

func (p *progress) describe(files int64) string {
	if p.total > 0 {
		return fmt.Sprintf("%s (%d/%d files)", p.desc, files, p.total)
	}
	return fmt.Sprintf("%s (%d files)", p.desc, files)
}

func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// clear erases the bar before a line is printed to the same terminal (it
// is drawn again at its next update).
func (p *progress) clear() {
	if p.bar != nil {
		p.bar.Clear()
	}
}
