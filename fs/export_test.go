package fs

// ReadsServed is how many READs without a handle the mount has served.
func (r *Root) ReadsServed() int64 { return r.reads.Load() }

// Prefetched is how many blobs the prefetcher has read ahead.
func (r *Root) Prefetched() int64 { return r.prefetched.Load() }
