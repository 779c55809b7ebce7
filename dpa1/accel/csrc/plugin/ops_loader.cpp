// The library that programs loading dpa1 models through DeePMD-kit's C++ (LAMMPS's
// pair_style deepmd) put in DP_PLUGIN_PATH; `dpa1 ops-path` builds it and prints its path.
//
// It links no torch. On load it checks that the torch already in the process is the release the
// op library was built against, and only then loads the op library (whose static initialisers
// register torch.ops.dpa1). Why: an op library built against another torch otherwise fails
// inside DeePMD-kit with an undefined-symbol line from the dynamic linker, or, where the symbols
// happen to resolve, registers its ops through a mismatched ABI. Each problem it finds is one
// line on stderr starting with "dpa1:"; the op library is then not loaded, and loading a model
// that calls the ops fails with torch's "Unknown builtin op: dpa1::...".
//
// Built by dpa1/accel/build.py with DPA1_OPS_LIBRARY (the op library's path) and
// DPA1_TORCH_VERSION (torch.__version__ at build time) defined.

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <cstring>

#ifndef DPA1_OPS_LIBRARY
#error "DPA1_OPS_LIBRARY must name the op library"
#endif
#ifndef DPA1_TORCH_VERSION
#error "DPA1_TORCH_VERSION must give the torch version the op library was built against"
#endif

namespace {

char torch_dir[4096];  // the directory of the libtorch_cpu.so loaded in this process

int find_torch(struct dl_phdr_info* info, size_t, void*) {
  const char* name = info->dlpi_name;
  const char* base = name ? std::strrchr(name, '/') : nullptr;
  if (base == nullptr || std::strncmp(base + 1, "libtorch_cpu.", 13) != 0) return 0;
  const size_t n = static_cast<size_t>(base - name);
  if (n >= sizeof torch_dir) return 0;
  std::memcpy(torch_dir, name, n);
  torch_dir[n] = '\0';
  return 1;
}

// The quoted value on the first line of `path` that starts with `key`, or false.
bool read_quoted(const char* path, const char* key, char* out, size_t len) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;
  char line[512];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, key, std::strlen(key)) != 0) continue;
    char* q = std::strpbrk(line, "'\"");
    if (q == nullptr) break;
    char* end = std::strchr(q + 1, *q);
    if (end == nullptr || static_cast<size_t>(end - q - 1) >= len) break;
    std::memcpy(out, q + 1, static_cast<size_t>(end - q - 1));
    out[end - q - 1] = '\0';
    found = true;
  }
  std::fclose(f);
  return found;
}

// The release of the torch loaded in this process: <torch>/version.py beside lib/ (pip's torch),
// else <libtorch>/build-version (the C++ distribution). False when torch is not loaded yet or
// neither file is there: the check is then skipped.
bool process_torch_version(char* out, size_t len) {
  if (dl_iterate_phdr(find_torch, nullptr) == 0) return false;
  char path[4200];
  std::snprintf(path, sizeof path, "%s/../version.py", torch_dir);
  if (read_quoted(path, "__version__", out, len)) return true;
  std::snprintf(path, sizeof path, "%s/../build-version", torch_dir);
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;
  const bool ok = std::fgets(out, static_cast<int>(len), f) != nullptr;
  std::fclose(f);
  if (ok) out[std::strcspn(out, "\r\n")] = '\0';
  return ok && out[0] != '\0';
}

// Same release: equal up to the local part ("2.11.0+cu126" and "2.11.0+cpu" are one release).
bool same_release(const char* a, const char* b) {
  const size_t na = std::strcspn(a, "+"), nb = std::strcspn(b, "+");
  return na == nb && std::strncmp(a, b, na) == 0;
}

__attribute__((constructor)) void load_dpa1_ops() {
  char running[256];
  if (process_torch_version(running, sizeof running) && !same_release(running, DPA1_TORCH_VERSION)) {
    std::fprintf(stderr,
                 "dpa1: not loading the op library %s: it was built for torch %s, but this process runs torch %s "
                 "(%s); run `dpa1 ops-path` with the Python of that torch and put the path it prints in "
                 "DP_PLUGIN_PATH\n",
                 DPA1_OPS_LIBRARY, DPA1_TORCH_VERSION, running, torch_dir);
    return;
  }
  if (dlopen(DPA1_OPS_LIBRARY, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    std::fprintf(stderr,
                 "dpa1: cannot load the op library %s (%s); run `dpa1 ops-path` to build it again and put the "
                 "path it prints in DP_PLUGIN_PATH\n",
                 DPA1_OPS_LIBRARY, why ? why : "unknown error");
  }
}

}  // namespace
