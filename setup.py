"""Installs e2e_tf and compiles the DeformableConv2D custom op.

The repository keeps the design card's top-level folders; they are installed
under the `e2e_tf` namespace so that nothing is importable as a top-level
`datasets` package (which would shadow Hugging Face `datasets`):

  e2e_tf/                 -> e2e_tf
  datasets/               -> e2e_tf.datasets      (TFDS builders)
  custom_ops/python/      -> e2e_tf.custom_ops    (op loader; C++/CUDA in custom_ops/cc)

The DeformableConv2D op is compiled with exactly TensorFlow's own flags
(tf.sysconfig), plus its CUDA kernels when `nvcc` is on PATH, into
custom_ops/python/ops/_deformable_conv2d_ops.so (in the source tree for editable
installs, in the package otherwise). A failed build only warns: the project then
runs on its pure-TensorFlow implementation. Environment variables:
  E2E_TF_BUILD_CUDA=0         skip the CUDA kernels even when nvcc is found
  E2E_TF_CUDA_ARCHS="80;90"   GPU architectures (SASS for each, PTX for the last)
  CXX                         the C++ compiler (default c++)
"""

import os
import shutil
import subprocess
import sys

import setuptools
from setuptools.command.build_ext import build_ext

OP_SOURCES = {
    "ops": "custom_ops/cc/ops/deformable_conv2d_ops.cc",
    "gemm": "custom_ops/cc/kernels/cpu_gemm.cc",
    "kernels": "custom_ops/cc/kernels/deformable_conv2d_kernels.cc",
}
OP_CUDA_SOURCE = "custom_ops/cc/kernels/deformable_conv2d_kernels.cu.cc"
OP_HEADERS = ["custom_ops/cc/kernels/deformable_conv2d_kernels.h",
              "custom_ops/cc/kernels/cpu_gemm.h"]


class BuildCustomOps(build_ext):
    """Builds the op library with TensorFlow's flags; never fails the installation."""

    def get_ext_filename(self, fullname):
        # A TF op library, not a Python extension module: no ABI suffix, so the loader
        # finds one fixed name.
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext):
        output = os.path.abspath(self.get_ext_fullpath(ext.name))
        try:
            self._build_op_library(output)
        except Exception as error:  # noqa: BLE001 - any failure leaves the pure-TF path
            if os.path.exists(output):
                os.remove(output)  # never ship a library built from other sources
            print(f"WARNING: e2e_tf: the DeformableConv2D op was not compiled ({error}); "
                  "e2e_tf will use its pure-TensorFlow implementation.", file=sys.stderr)

    def _build_op_library(self, output):
        import tensorflow as tf

        cxx = os.environ.get("CXX", "c++")
        compile_flags = list(tf.sysconfig.get_compile_flags()) + ["-O3", "-fPIC"]
        link_flags = list(tf.sysconfig.get_link_flags())
        # A fixed folder (not pip's per-build temp) so reinstalls recompile only what changed.
        temp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build",
                            "e2e_tf_custom_ops")
        os.makedirs(temp, exist_ok=True)
        cuda = self._cuda_setup()
        defines = ["-DGOOGLE_CUDA=1"] if cuda else []
        jobs = []
        for name, source in OP_SOURCES.items():
            obj = os.path.join(temp, name + (".cuda" if cuda and name == "kernels" else "") + ".o")
            jobs.append((obj, [cxx, *compile_flags, *defines, "-c", source, "-o", obj], source))
        if cuda:
            nvcc, cuda_home, arch_flags = cuda
            obj = os.path.join(temp, "kernels.cu.o")
            jobs.append((obj, [nvcc, "-std=c++17", "-O3", "-DGOOGLE_CUDA=1", "-x", "cu",
                               "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", *arch_flags,
                               "-c", OP_CUDA_SOURCE, "-o", obj], OP_CUDA_SOURCE))
        self._run_parallel(jobs)
        objects = [obj for obj, _, _ in jobs]
        extra = []
        if cuda:
            extra = [f"-L{os.path.join(cuda[1], 'lib64')}", "-l:libcudart_static.a", "-lrt",
                     "-ldl", "-lpthread"]
        os.makedirs(os.path.dirname(output), exist_ok=True)
        partial = output + ".partial"  # a process loading the library never sees half a file
        self._run([cxx, "-shared", *objects, "-o", partial, *link_flags, *extra, "-O3", "-fPIC"])
        os.replace(partial, output)
        print(f"e2e_tf: built {output} ({'CPU + CUDA' if cuda else 'CPU'} kernels)")

    def _cuda_setup(self):
        """(nvcc, CUDA home, -gencode flags), or None when the CUDA kernels are not built."""
        if os.environ.get("E2E_TF_BUILD_CUDA", "1").strip() == "0":
            return None
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            return None
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        if not cuda_home:
            # nvcc may be a wrapper script: ask it where its toolkit lives.
            probe = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o",
                                    os.devnull], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            tops = [line.split("=", 1)[1].strip() for line in probe.stdout.splitlines()
                    if line.startswith("#$ TOP=")]
            cuda_home = os.path.normpath(tops[0]) if tops else os.path.dirname(
                os.path.dirname(os.path.realpath(nvcc)))
        if not os.path.exists(os.path.join(cuda_home, "lib64", "libcudart_static.a")):
            print(f"WARNING: e2e_tf: {nvcc} has no lib64/libcudart_static.a under {cuda_home}; "
                  "building the DeformableConv2D op without CUDA kernels.", file=sys.stderr)
            return None
        archs = [a.strip() for a in os.environ.get("E2E_TF_CUDA_ARCHS", "80;90").split(";")
                 if a.strip()]
        flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        return nvcc, cuda_home, flags

    def _run_parallel(self, jobs):
        """Compiles the objects that are out of date, all at once."""
        running = []
        for obj, command, source in jobs:
            inputs = [source, *OP_HEADERS, __file__]
            if (not self.force and os.path.exists(obj)
                    and os.path.getmtime(obj) >= max(os.path.getmtime(i) for i in inputs)):
                continue
            print(" ".join(command))
            running.append((command, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True)))
        failures = []
        for command, process in running:
            log, _ = process.communicate()
            if process.returncode != 0:
                failures.append(f"{command[0]} {command[-3]} failed:\n{log[-4000:]}")
        if failures:
            raise RuntimeError("\n".join(failures))

    @staticmethod
    def _run(command):
        print(" ".join(command))
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}")


setuptools.setup(
    name="e2e_tf",
    version="0.1.0",
    description="End-to-end automatic image annotation (E2E-DCNN + ML-WGAN) in TensorFlow/Keras",
    python_requires=">=3.10",
    packages=(
        ["e2e_tf." + p for p in setuptools.find_packages("e2e_tf")]
        + ["e2e_tf"]
        + ["e2e_tf.datasets"]
        + ["e2e_tf.datasets." + p for p in setuptools.find_packages("datasets")]
        + ["e2e_tf.custom_ops"]
        + ["e2e_tf.custom_ops." + p for p in setuptools.find_packages("custom_ops/python")]
    ),
    package_dir={
        "e2e_tf": "e2e_tf",
        "e2e_tf.datasets": "datasets",
        "e2e_tf.custom_ops": "custom_ops/python",
    },
    package_data={"e2e_tf.datasets": ["*/dummy_data/**/*", "*/*.txt", "*/*.bib", "*/*.md"]},
    ext_modules=[setuptools.Extension(
        "e2e_tf.custom_ops.ops._deformable_conv2d_ops",
        sources=[*OP_SOURCES.values(), OP_CUDA_SOURCE],
        depends=OP_HEADERS,
    )],
    cmdclass={"build_ext": BuildCustomOps},
    install_requires=[
        "tensorflow>=2.16",
        "tensorflow-datasets>=4.9",
        "numpy",
        "pillow",
        "absl-py",
        "scipy",
        "matplotlib",
    ],
)
