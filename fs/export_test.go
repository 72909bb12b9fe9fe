package fs

// ReadsServed is how many READs without a handle the mount has served.
func (r *Root) ReadsServed() int64 { return r.reads.Load() }

// Prefetched is how many directory records and blobs the prefetcher has
// read ahead.
func (r *Root) Prefetched() (dirs, blobs int64) {
	return r.prefetchedDirs.Load(), r.prefetchedBlobs.Load()
}
