// Stand-in for the header a CUDA build of torch generates at configure time (CPU wheels do not
// ship it). Used only by .ci/check-cuda-bindings, which syntax-checks the CUDA paths of the
// bindings against the CPU torch on machines without a CUDA torch; nothing is linked with it.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
