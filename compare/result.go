package compare

// Result is one strategy's figures (defined in the package doc). The JSON
// names are stable: `storefs compare --json` prints a list of these.
type Result struct {
	Strategy  Strategy `json:"strategy"`
	Estimated bool     `json:"estimated"` // from Analyse, not a real store

	LogicalBytes      int64    `json:"logicalBytes"`
	Files             int64    `json:"files"`
	DiskBytes         int64    `json:"diskBytes"`
	Inodes            int64    `json:"inodes"`
	FilesStored       int64    `json:"filesStored"`
	FilesDeduplicated int64    `json:"filesDeduplicated"`
	StoredBytes       int64    `json:"storedBytes"`       // sizes of the distinct contents kept
	DeduplicatedBytes int64    `json:"deduplicatedBytes"` // LogicalBytes - StoredBytes
	Chunks            int64    `json:"chunks"`
	Ratio             *float64 `json:"ratio"` // DiskBytes / DiskBytes of none; null without none
	MetadataBytes     int64    `json:"metadataBytes"`
	BuildSeconds      float64  `json:"buildSeconds"`

	Areas map[string]Usage `json:"areas"`
	State string           `json:"state,omitempty"` // the kept store's state dir (--keep)
}

// Usage is the allocated bytes and inodes of part of a state dir.
type Usage struct {
	Bytes  int64 `json:"bytes"`
	Inodes int64 `json:"inodes"`
}

func (u *Usage) add(bytes int64) {
	u.Bytes += bytes
	u.Inodes++
}

// setRatios fills in each result's Ratio against the none result, if any.
func setRatios(rs []Result) {
	var base int64 = -1
	for _, r := range rs {
		if r.Strategy == None {
			base = r.DiskBytes
		}
	}
	if base <= 0 {
		return
	}
	for i := range rs {
		v := float64(rs[i].DiskBytes) / float64(base)
		rs[i].Ratio = &v
	}
}
