# Sourced by the other scripts: one persistent target dir outside the
# clone, and the same native build flags every time (a change of flags
# rebuilds RocksDB and FAISS, 30+ minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vektagraf-target}"
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then
  # FAISS's AVX2 kernels (1.3-1.4x faster search here); the binary then
  # needs an x86-64-v3 CPU. Set VEKTAGRAF_PORTABLE=1 for a generic build.
  if [ -z "${VEKTAGRAF_PORTABLE:-}" ]; then
    export CXXFLAGS="-mavx2 -mfma -mf16c -mpopcnt -mpclmul"
    export CFLAGS="-mavx2 -mfma -mf16c -mpopcnt -mpclmul"
  fi
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
