package cpu

import (
	"sync"

	"gonum.org/v1/gonum/blas/blas32"
)

// A packed, blocked SGEMM in the manner of GotoBLAS/BLIS: op(A) is packed
// into panels of gemmMR rows and op(B) into panels of gemmNR columns, each
// kc deep, and an assembly micro-kernel computes one gemmMR x gemmNR tile of
// C in registers. The smaller of the two operands is packed once and shared;
// the other is split into units along its long side, each unit packing its
// own part, and the units run in parallel. Without AVX2 and FMA (or off
// amd64) gonum's BLAS does the product instead.

const (
	gemmMR    = 6   // rows of a register tile (micro-kernel)
	gemmNR    = 16  // columns of a register tile
	gemmKC    = 256 // depth of a packed block: a B micro-panel stays in L1
	gemmMCMax = 144 // rows of A per unit: the packed block stays in L2
	gemmNCMax = 512 // columns of B per unit
	// Products below this many multiply-adds run as one unit.
	gemmSerialFMAs = 1 << 20
)

// gemmJob is one product c = alpha op(a) op(b) (c is m x n, the inner
// dimension k), split into units along m (splitN false: op(b) is packed
// once into shared) or along n (op(a) packed once).
type gemmJob struct {
	transA, transB bool
	m, n, k        int
	alpha          float32
	a, b, c        []float32
	lda, ldb, ldc  int

	accumulate bool // c += alpha op(a) op(b) instead of c = ...
	// directA: op(a) = a is read in place by the micro-kernel (split along
	// m, a not transposed), so alpha is applied to the packed b instead.
	directA        bool
	alphaA, alphaB float32

	splitN bool
	chunk  int       // rows (or columns) of c per unit, a multiple of gemmMR (gemmNR)
	shared []float32 // the packed operand every unit reads
}

var gemmJobs sync.Pool

func roundUp(x, m int) int { return (x + m - 1) / m * m }

// gemm computes c = alpha op(a) op(b) for row-major operands with leading
// dimensions lda, ldb, ldc.
func gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	gemmInto(false, transA, transB, m, n, k, alpha, a, lda, b, ldb, c, ldc)
}

// gemmAcc computes c += alpha op(a) op(b).
func gemmAcc(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	gemmInto(true, transA, transB, m, n, k, alpha, a, lda, b, ldb, c, ldc)
}

func gemmInto(accumulate, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		if !accumulate {
			for i := 0; i < m; i++ {
				clear(c[i*ldc : i*ldc+n])
			}
		}
		return
	}
	if !hasAVX2FMA {
		beta := float32(0)
		if accumulate {
			beta = 1
		}
		gonumGemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	j := pooled[gemmJob](&gemmJobs)
	*j = gemmJob{transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
		a: a, b: b, c: c, lda: lda, ldb: ldb, ldc: ldc, accumulate: accumulate}
	// Split along the longer side of c; the other operand is packed once.
	j.splitN = n > m
	j.directA = !j.splitN && !transA
	j.alphaA, j.alphaB = alpha, 1
	if j.directA {
		j.alphaA, j.alphaB = 1, alpha
	}
	long, tile, maxChunk := m, gemmMR, gemmMCMax
	if j.splitN {
		long, tile, maxChunk = n, gemmNR, gemmNCMax
	}
	units := 1
	if m*n*k >= gemmSerialFMAs {
		units = 4 * workers()
	}
	j.chunk = min(maxChunk, roundUp((long+units-1)/units, tile))
	var sharedBuf *[]float32
	if j.splitN {
		sharedBuf = getScratch(roundUp(m, gemmMR) * k)
		j.shared = *sharedBuf
		j.packA(j.shared, 0, m)
	} else {
		sharedBuf = getScratch(roundUp(n, gemmNR) * k)
		j.shared = *sharedBuf
		j.packB(j.shared, 0, n)
	}
	parallelFor((long+j.chunk-1)/j.chunk, j)
	putScratch(sharedBuf)
	*j = gemmJob{}
	gemmJobs.Put(j)
}

// packA packs rows [i0, i0+rows) of alpha op(A), every k block, into dst:
// block p0 at offset p0*roundUp(rows, MR), inside it panel ip at ip*kc*MR,
// element (p, i) of a panel at p*MR+i. Rows past the end are zero.
func (j *gemmJob) packA(dst []float32, i0, rows int) {
	padRows := roundUp(rows, gemmMR)
	for p0 := 0; p0 < j.k; p0 += gemmKC {
		kc := min(gemmKC, j.k-p0)
		blk := dst[p0*padRows : p0*padRows+padRows*kc]
		for ip := 0; ip < padRows; ip += gemmMR {
			panel := blk[ip*kc : (ip+gemmMR)*kc]
			valid := min(gemmMR, rows-ip)
			if j.transA { // A(i, p) = a[p*lda + i]: rows of a are contiguous in i
				for p := 0; p < kc; p++ {
					src := j.a[(p0+p)*j.lda+i0+ip:]
					out := panel[p*gemmMR : p*gemmMR+gemmMR]
					for i := 0; i < valid; i++ {
						out[i] = j.alphaA * src[i]
					}
					clear(out[valid:])
				}
				continue
			}
			if valid == gemmMR { // A(i, p) = a[i*lda + p]: six rows, read in step
				base := (i0+ip)*j.lda + p0
				r0 := j.a[base : base+kc]
				r1 := j.a[base+j.lda : base+j.lda+kc]
				r2 := j.a[base+2*j.lda : base+2*j.lda+kc]
				r3 := j.a[base+3*j.lda : base+3*j.lda+kc]
				r4 := j.a[base+4*j.lda : base+4*j.lda+kc]
				r5 := j.a[base+5*j.lda : base+5*j.lda+kc]
				al := j.alphaA
				for p := range r0 {
					out := panel[p*gemmMR : p*gemmMR+gemmMR : p*gemmMR+gemmMR]
					out[0], out[1], out[2] = al*r0[p], al*r1[p], al*r2[p]
					out[3], out[4], out[5] = al*r3[p], al*r4[p], al*r5[p]
				}
				continue
			}
			for i := 0; i < valid; i++ {
				src := j.a[(i0+ip+i)*j.lda+p0 : (i0+ip+i)*j.lda+p0+kc]
				for p, v := range src {
					panel[p*gemmMR+i] = j.alphaA * v
				}
			}
			for i := valid; i < gemmMR; i++ {
				for p := 0; p < kc; p++ {
					panel[p*gemmMR+i] = 0
				}
			}
		}
	}
}

// packB packs columns [j0, j0+cols) of op(B), every k block, into dst:
// block p0 at offset p0*roundUp(cols, NR), panel jp at jp*kc*NR, element
// (p, j) of a panel at p*NR+j. Columns past the end are zero.
func (j *gemmJob) packB(dst []float32, j0, cols int) {
	padCols := roundUp(cols, gemmNR)
	for p0 := 0; p0 < j.k; p0 += gemmKC {
		kc := min(gemmKC, j.k-p0)
		blk := dst[p0*padCols : p0*padCols+padCols*kc]
		for jp := 0; jp < padCols; jp += gemmNR {
			panel := blk[jp*kc : (jp+gemmNR)*kc]
			valid := min(gemmNR, cols-jp)
			if !j.transB { // B(p, j) = b[p*ldb + j]
				for p := 0; p < kc; p++ {
					src := j.b[(p0+p)*j.ldb+j0+jp : (p0+p)*j.ldb+j0+jp+valid]
					out := panel[p*gemmNR : p*gemmNR+gemmNR]
					if j.alphaB == 1 {
						copy(out, src)
					} else {
						for x, v := range src {
							out[x] = j.alphaB * v
						}
					}
					clear(out[valid:])
				}
				continue
			}
			for jj := 0; jj < valid; jj++ { // B(p, j) = b[j*ldb + p]
				src := j.b[(j0+jp+jj)*j.ldb+p0 : (j0+jp+jj)*j.ldb+p0+kc]
				for p, v := range src {
					panel[p*gemmNR+jj] = j.alphaB * v
				}
			}
			for jj := valid; jj < gemmNR; jj++ {
				for p := 0; p < kc; p++ {
					panel[p*gemmNR+jj] = 0
				}
			}
		}
	}
}

// run computes unit u: a block of rows (or columns) of c.
func (j *gemmJob) Run(u int) {
	lo := u * j.chunk
	if j.splitN {
		cols := min(j.chunk, j.n-lo)
		buf := getScratch(roundUp(cols, gemmNR) * j.k)
		j.packB(*buf, lo, cols)
		j.block(j.shared, 0, j.m, *buf, lo, cols)
		putScratch(buf)
		return
	}
	rows := min(j.chunk, j.m-lo)
	if j.directA {
		j.blockDirect(j.a[lo*j.lda:], j.c[lo*j.ldc:], rows)
		return
	}
	buf := getScratch(roundUp(rows, gemmMR) * j.k)
	j.packA(*buf, lo, rows)
	j.block(*buf, lo, rows, j.shared, 0, j.n)
	putScratch(buf)
}

// block computes c[i0:i0+rows, j0:j0+cols] from packed a (those rows) and
// packed b (those columns).
func (j *gemmJob) block(pa []float32, i0, rows int, pb []float32, j0, cols int) {
	padRows, padCols := roundUp(rows, gemmMR), roundUp(cols, gemmNR)
	var edge [gemmMR * gemmNR]float32
	for p0 := 0; p0 < j.k; p0 += gemmKC {
		kc := min(gemmKC, j.k-p0)
		acc := 0
		if p0 > 0 || j.accumulate {
			acc = 1
		}
		ablk, bblk := pa[p0*padRows:], pb[p0*padCols:]
		for jp := 0; jp < padCols; jp += gemmNR {
			bp := &bblk[jp*kc]
			nv := min(gemmNR, cols-jp)
			for ip := 0; ip < padRows; ip += gemmMR {
				ap := &ablk[ip*kc]
				mv := min(gemmMR, rows-ip)
				ci := (i0+ip)*j.ldc + j0 + jp
				if mv == gemmMR && nv == gemmNR {
					sgemmKernel6x16(kc, ap, bp, &j.c[ci], j.ldc, acc)
					continue
				}
				sgemmKernel6x16(kc, ap, bp, &edge[0], gemmNR, 0)
				for i := 0; i < mv; i++ {
					row := j.c[ci+i*j.ldc : ci+i*j.ldc+nv]
					src := edge[i*gemmNR : i*gemmNR+nv]
					if acc != 0 {
						for x, v := range src {
							row[x] += v
						}
					} else {
						copy(row, src)
					}
				}
			}
		}
	}
}

// blockDirect computes rows of c (starting at c[0], leading dimension
// j.ldc) from the same rows of op(a), read in place from a (leading
// dimension j.lda), and the shared packed b (all columns). A last partial
// panel of rows is packed (zero-padded) for the packed kernel.
func (j *gemmJob) blockDirect(a, c []float32, rows int) {
	full := rows / gemmMR * gemmMR
	padCols := roundUp(j.n, gemmNR)
	var tail *[]float32
	if full < rows {
		tail = getScratch(gemmMR * gemmKC)
		defer putScratch(tail)
	}
	var edge [gemmMR * gemmNR]float32
	for p0 := 0; p0 < j.k; p0 += gemmKC {
		kc := min(gemmKC, j.k-p0)
		acc := 0
		if p0 > 0 || j.accumulate {
			acc = 1
		}
		if tail != nil {
			j.packTailA(*tail, a[full*j.lda:], rows-full, p0, kc)
		}
		bblk := j.shared[p0*padCols:]
		for jp := 0; jp < padCols; jp += gemmNR {
			bp := &bblk[jp*kc]
			nv := min(gemmNR, j.n-jp)
			for ip := 0; ip < rows; ip += gemmMR {
				mv := min(gemmMR, rows-ip)
				ci := ip*j.ldc + jp
				if mv == gemmMR && nv == gemmNR {
					sgemmKernel6x16U(kc, &a[ip*j.lda+p0], j.lda, bp, &c[ci], j.ldc, acc)
					continue
				}
				if mv == gemmMR {
					sgemmKernel6x16U(kc, &a[ip*j.lda+p0], j.lda, bp, &edge[0], gemmNR, 0)
				} else {
					sgemmKernel6x16(kc, &(*tail)[0], bp, &edge[0], gemmNR, 0)
				}
				for i := 0; i < mv; i++ {
					row := c[ci+i*j.ldc : ci+i*j.ldc+nv]
					src := edge[i*gemmNR : i*gemmNR+nv]
					if acc != 0 {
						for x, v := range src {
							row[x] += v
						}
					} else {
						copy(row, src)
					}
				}
			}
		}
	}
}

// packTailA packs the first rows (< MR) of a (leading dimension j.lda),
// k range [p0, p0+kc), as one zero-padded panel.
func (j *gemmJob) packTailA(dst []float32, a []float32, rows, p0, kc int) {
	panel := dst[:kc*gemmMR]
	clear(panel)
	for i := 0; i < rows; i++ {
		src := a[i*j.lda+p0 : i*j.lda+p0+kc]
		for p, v := range src {
			panel[p*gemmMR+i] = j.alphaA * v
		}
	}
}

// gonumGemm is the portable fallback.
func gonumGemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	blas32.Gemm(transpose(transA), transpose(transB), alpha,
		blas32.General{Rows: ar, Cols: ac, Stride: lda, Data: a},
		blas32.General{Rows: br, Cols: bc, Stride: ldb, Data: b},
		beta, blas32.General{Rows: m, Cols: n, Stride: ldc, Data: c})
}
