package store

import (
	"math/bits"
	"sync"
)

// fileBuf is a buffer a small file is read into, recycled once the NAR
// hasher has taken its bytes: an add of many small files would otherwise
// allocate and collect a buffer per file (allocation and collection were a
// tenth of a warm add's CPU time). Buffers come in power-of-two classes
// from 1 KiB to the smallest above smallFile.
type fileBuf struct{ b []byte }

const (
	minBufShift = 10
	maxBufShift = 24 // 1<<maxBufShift > smallFile
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// bufSize is the size of the buffer that holds n bytes.
func bufSize(n int) int {
	if n <= 1<<minBufShift {
		return 1 << minBufShift
	}
	return 1 << bits.Len(uint(n-1))
}

func bufClass(size int) int { return bits.Len(uint(size)) - 1 - minBufShift }

func getBuf(n int) *fileBuf {
	size := bufSize(n)
	if fb, ok := bufPools[bufClass(size)].Get().(*fileBuf); ok {
		return fb
	}
	return &fileBuf{b: make([]byte, size)}
}

func putBuf(fb *fileBuf) { bufPools[bufClass(len(fb.b))].Put(fb) }
