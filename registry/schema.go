package registry

// SchemaVersion is the version of the bucket layout and encodings. Open
// refuses a database with a different version.
const SchemaVersion = 1

// Bucket names. Nothing outside this file spells them.
var (
	bucketMeta      = []byte("meta")
	bucketPaths     = []byte("paths")
	bucketRefs      = []byte("refs")
	bucketReferrers = []byte("referrers")
	bucketDirs      = []byte("dirs")

	allBuckets = [][]byte{bucketMeta, bucketPaths, bucketRefs, bucketReferrers, bucketDirs}
)

// Keys of the meta bucket.
var (
	metaSchema   = []byte("schema")
	metaStoreDir = []byte("storeDir")
	metaMode     = []byte("mode")
)

// settingKey is the meta key of a store setting: "setting:<name>".
func settingKey(name string) []byte { return []byte("setting:" + name) }
