# Sourced by the scripts that run on the GPU machine (gpu-check.sh, gpu-train.sh): sets `bin` to
# the CUDA build of ciak and LD_LIBRARY_PATH to the driver's and CUDA's libraries there.
#
# The binary: $CIAK_BIN, else .gpu/ciak.xz unpacked to /tmp (python's lzma if xz is missing),
# else .gpu/ciak. Returns 2 when there is none.
bin=${CIAK_BIN:-.gpu/ciak}
if [ -z "${CIAK_BIN:-}" ] && [ -f .gpu/ciak.xz ]; then
  bin=/tmp/ciak-gpu
  if command -v xz >/dev/null; then xz -dc .gpu/ciak.xz >"$bin"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .gpu/ciak.xz "$bin"; fi
  chmod +x "$bin"
fi
if [ ! -x "$bin" ]; then
  echo "no $bin (nor .gpu/ciak.xz): run scripts/ci-cuda-check.sh --build on the build machine" >&2
  return 2
fi

# The driver (libcuda), cuBLAS/cuRAND/cudart of the system toolkit, else those of PyTorch's wheels.
libdirs=$(ls -d /usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null)
libdirs="$libdirs $(python3 -c 'import glob,site; print(" ".join(d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/*/lib")))' 2>/dev/null)"
for d in $libdirs; do LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"; done
export LD_LIBRARY_PATH
