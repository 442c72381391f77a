#include "textflag.h"

// Elementwise AVX2 kernels over whole blocks of 8 float32s (the callers
// handle tails). Every kernel does exactly the float32 operations of its
// Go fallback in elem.go, in the same order and without FMA contraction,
// so results are bit-identical with and without these kernels.

// func adamWAVX(w, grad, m1, m2 *float32, n int, c *adamConsts)
TEXT ·adamWAVX(SB), NOSPLIT, $0-48
	MOVQ w+0(FP), AX
	MOVQ grad+8(FP), BX
	MOVQ m1+16(FP), CX
	MOVQ m2+24(FP), DX
	MOVQ n+32(FP), SI
	MOVQ c+40(FP), R8
	VBROADCASTSS 0(R8), Y8   // b1
	VBROADCASTSS 4(R8), Y9   // 1 - b1
	VBROADCASTSS 8(R8), Y10  // b2
	VBROADCASTSS 12(R8), Y11 // 1 - b2
	VBROADCASTSS 16(R8), Y12 // eps
	VBROADCASTSS 20(R8), Y13 // step size
	VBROADCASTSS 24(R8), Y14 // decay
	SHRQ $3, SI
	JZ adamw_done
adamw_loop:
	VMOVUPS (BX), Y0
	VMOVUPS (CX), Y1
	VMOVUPS (DX), Y2
	VMULPS Y8, Y1, Y1
	VMULPS Y9, Y0, Y3
	VADDPS Y3, Y1, Y1
	VMULPS Y11, Y0, Y3
	VMULPS Y0, Y3, Y3
	VMULPS Y10, Y2, Y2
	VADDPS Y3, Y2, Y2
	VMOVUPS Y1, (CX)
	VMOVUPS Y2, (DX)
	VSQRTPS Y2, Y4
	VADDPS Y12, Y4, Y4
	VDIVPS Y4, Y1, Y5
	VMOVUPS (AX), Y6
	VMULPS Y14, Y6, Y6
	VMULPS Y13, Y5, Y5
	VSUBPS Y5, Y6, Y6
	VMOVUPS Y6, (AX)
	ADDQ $32, AX
	ADDQ $32, BX
	ADDQ $32, CX
	ADDQ $32, DX
	DECQ SI
	JNZ adamw_loop
adamw_done:
	VZEROUPPER
	RET

// func adamDirAVX(x, m1, m2 *float32, n int, c *adamConsts)
TEXT ·adamDirAVX(SB), NOSPLIT, $0-40
	MOVQ x+0(FP), BX
	MOVQ m1+8(FP), CX
	MOVQ m2+16(FP), DX
	MOVQ n+24(FP), SI
	MOVQ c+32(FP), R8
	VBROADCASTSS 0(R8), Y8
	VBROADCASTSS 4(R8), Y9
	VBROADCASTSS 8(R8), Y10
	VBROADCASTSS 12(R8), Y11
	VBROADCASTSS 16(R8), Y12
	SHRQ $3, SI
	JZ dir_done
dir_loop:
	VMOVUPS (BX), Y0
	VMOVUPS (CX), Y1
	VMOVUPS (DX), Y2
	VMULPS Y8, Y1, Y1
	VMULPS Y9, Y0, Y3
	VADDPS Y3, Y1, Y1
	VMULPS Y11, Y0, Y3
	VMULPS Y0, Y3, Y3
	VMULPS Y10, Y2, Y2
	VADDPS Y3, Y2, Y2
	VMOVUPS Y1, (CX)
	VMOVUPS Y2, (DX)
	VSQRTPS Y2, Y4
	VADDPS Y12, Y4, Y4
	VDIVPS Y4, Y1, Y5
	VMOVUPS Y5, (BX)
	ADDQ $32, BX
	ADDQ $32, CX
	ADDQ $32, DX
	DECQ SI
	JNZ dir_loop
dir_done:
	VZEROUPPER
	RET

// func dotAVX(a, b *float32, n int, lanes *[8]float64)
// lanes[j] = sum over i = j (mod 8) of float64(a[i]) * float64(b[i]),
// accumulated in index order.
TEXT ·dotAVX(SB), NOSPLIT, $0-32
	MOVQ a+0(FP), AX
	MOVQ b+8(FP), BX
	MOVQ n+16(FP), SI
	VXORPD Y0, Y0, Y0
	VXORPD Y1, Y1, Y1
	SHRQ $3, SI
	JZ dot_done
dot_loop:
	VCVTPS2PD (AX), Y2
	VCVTPS2PD 16(AX), Y3
	VCVTPS2PD (BX), Y4
	VCVTPS2PD 16(BX), Y5
	VMULPD Y4, Y2, Y2
	VMULPD Y5, Y3, Y3
	VADDPD Y2, Y0, Y0
	VADDPD Y3, Y1, Y1
	ADDQ $32, AX
	ADDQ $32, BX
	DECQ SI
	JNZ dot_loop
dot_done:
	MOVQ lanes+24(FP), DI
	VMOVUPD Y0, (DI)
	VMOVUPD Y1, 32(DI)
	VZEROUPPER
	RET

// func axpbyNormAVX(x *float32, a float32, y *float32, b float32, n int, lanes *[8]float64)
// x[i] = a*x[i] + b*y[i]; lanes as in dotAVX of the new x with itself.
TEXT ·axpbyNormAVX(SB), NOSPLIT, $0-48
	MOVQ x+0(FP), AX
	VBROADCASTSS a+8(FP), Y8
	MOVQ y+16(FP), BX
	VBROADCASTSS b+24(FP), Y9
	MOVQ n+32(FP), SI
	VXORPD Y0, Y0, Y0
	VXORPD Y1, Y1, Y1
	SHRQ $3, SI
	JZ axn_done
axn_loop:
	VMULPS (AX), Y8, Y2
	VMULPS (BX), Y9, Y3
	VADDPS Y3, Y2, Y2
	VMOVUPS Y2, (AX)
	VCVTPS2PD X2, Y4
	VEXTRACTF128 $1, Y2, X5
	VCVTPS2PD X5, Y5
	VMULPD Y4, Y4, Y4
	VMULPD Y5, Y5, Y5
	VADDPD Y4, Y0, Y0
	VADDPD Y5, Y1, Y1
	ADDQ $32, AX
	ADDQ $32, BX
	DECQ SI
	JNZ axn_loop
axn_done:
	MOVQ lanes+40(FP), DI
	VMOVUPD Y0, (DI)
	VMOVUPD Y1, 32(DI)
	VZEROUPPER
	RET

// func scaleAVX(x *float32, f float32, n int)
TEXT ·scaleAVX(SB), NOSPLIT, $0-24
	MOVQ x+0(FP), AX
	VBROADCASTSS f+8(FP), Y8
	MOVQ n+16(FP), SI
	SHRQ $3, SI
	JZ scale_done
scale_loop:
	VMULPS (AX), Y8, Y0
	VMOVUPS Y0, (AX)
	ADDQ $32, AX
	DECQ SI
	JNZ scale_loop
scale_done:
	VZEROUPPER
	RET

// func wngRowAVX(out, grad, w *float32, ratio, c float32, n int)
// out[i] = ratio * (grad[i] - c*w[i]).
TEXT ·wngRowAVX(SB), NOSPLIT, $0-40
	MOVQ out+0(FP), DI
	MOVQ grad+8(FP), BX
	MOVQ w+16(FP), CX
	VBROADCASTSS ratio+24(FP), Y8
	VBROADCASTSS c+28(FP), Y9
	MOVQ n+32(FP), SI
	SHRQ $3, SI
	JZ wng_done
wng_loop:
	VMULPS (CX), Y9, Y0
	VMOVUPS (BX), Y1
	VSUBPS Y0, Y1, Y1
	VMULPS Y8, Y1, Y1
	VMOVUPS Y1, (DI)
	ADDQ $32, DI
	ADDQ $32, BX
	ADDQ $32, CX
	DECQ SI
	JNZ wng_loop
wng_done:
	VZEROUPPER
	RET

// func finiteAVX(x *float32, n int) bool
// Whether the sum of x[i] - x[i] over blocks of 32 stays 0 (it becomes NaN
// as soon as one element is NaN or Inf).
TEXT ·finiteAVX(SB), NOSPLIT, $0-17
	MOVQ x+0(FP), AX
	MOVQ n+8(FP), SI
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	SHRQ $5, SI
	JZ fin_done
fin_loop:
	VMOVUPS (AX), Y4
	VMOVUPS 32(AX), Y5
	VMOVUPS 64(AX), Y6
	VMOVUPS 96(AX), Y7
	VSUBPS Y4, Y4, Y4
	VSUBPS Y5, Y5, Y5
	VSUBPS Y6, Y6, Y6
	VSUBPS Y7, Y7, Y7
	VADDPS Y4, Y0, Y0
	VADDPS Y5, Y1, Y1
	VADDPS Y6, Y2, Y2
	VADDPS Y7, Y3, Y3
	ADDQ $128, AX
	DECQ SI
	JNZ fin_loop
fin_done:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y2, Y2
	VADDPS Y2, Y0, Y0
	VXORPS Y1, Y1, Y1
	VCMPPS $0, Y1, Y0, Y0 // equal (ordered): NaN lanes compare false
	VMOVMSKPS Y0, BX
	CMPQ BX, $0xff
	SETEQ ret+16(FP)
	VZEROUPPER
	RET

// func axpyAVX(x *float32, a float32, y *float32, n int)
// x[i] += a * y[i].
TEXT ·axpyAVX(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), AX
	VBROADCASTSS a+8(FP), Y8
	MOVQ y+16(FP), BX
	MOVQ n+24(FP), SI
	SHRQ $3, SI
	JZ axpy_done
axpy_loop:
	VMULPS (BX), Y8, Y0
	VADDPS (AX), Y0, Y0
	VMOVUPS Y0, (AX)
	ADDQ $32, AX
	ADDQ $32, BX
	DECQ SI
	JNZ axpy_loop
axpy_done:
	VZEROUPPER
	RET
