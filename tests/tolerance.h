// tolerance.h: the error bounds the tests hold the code to, with the reasoning for each.
//
// A bound here is derived from the arithmetic, never widened to make a failing test pass. When a
// test fails, the bug is in the code (or the derivation below is wrong and gets a better argument).
#ifndef MSD_TOLERANCE_H
#define MSD_TOLERANCE_H

#include <math.h>

// Unit roundoff of float32.
#define TOL_FLT_EPS 5.9604644775390625e-08 // 2^-24

// Finite-difference checks of ref/ backward ops.
// The forward runs in float32, the loss L = sum_i r_i y_i is accumulated in double. The checker uses
// the fourth-order central stencil (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h: truncation error
// ~ h^4 |f^(5)| / 30, rounding error ~ u |y| sqrt(m) / h for the m outputs the perturbed entry
// touches (u = 2^-24, float32 outputs). Rounding dominates for float outputs, so the step is large:
// h = 5e-2 (relative to max(1, |x|)) puts both terms near 1e-5 of the gradient's scale for inputs,
// weights and r of order one (measured worst over all ops: 2e-4, the softmax and groupnorm). Errors
// are relative to max(|fd|, |analytic|), floored at FD_FLOOR times the tensor's largest gradient,
// so entries that are nearly zero are judged on the tensor's scale instead of their own. A wrong
// formula (a missing term, a transposed index, a wrong constant) gives errors of order one.
#define FD_STEP 5e-2
#define FD_FLOOR 1e-2
#define FD_TOL 1e-3

#endif
