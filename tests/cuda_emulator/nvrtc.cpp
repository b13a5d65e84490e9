// NVRTC for the CPU emulator of CUDA (libnvrtc.so): "compiles" the engine's CUDA C program by
// handing it, after kernel_runtime.h, to the host C++ compiler as a shared library, with one
// launch trampoline per kernel (`emu_launch_<name>`, found by preprocessing the program with
// __global__ marked). The "PTX" it returns names that library; driver.cpp loads it. Libraries
// are cached by the hash of what was compiled, under EMU_CACHE_DIR.
//
// Built with -DEMU_DIR (where kernel_runtime.h is), -DEMU_CACHE_DIR and -DEMU_BUILD (the
// emulator's source hash, which driver.cpp checks); the compiler is $CXX or c++.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

extern "C" {

typedef int nvrtcResult;
enum { NVRTC_SUCCESS = 0, NVRTC_ERROR_INVALID_INPUT = 3, NVRTC_ERROR_COMPILATION = 6 };

struct Program {
    std::string source, ptx, log;
};

static std::string read_file(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

static unsigned long long fnv1a(const std::string& s) {
    unsigned long long h = 1469598103934665603ULL;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
    return h;
}

static std::string compiler() {
    const char* cxx = getenv("CXX");
    return cxx && *cxx ? cxx : "c++";
}

// Runs `command`, appending its output to `log`; true when it exits 0.
static bool run(const std::string& command, std::string& log) {
    std::string full = command + " 2>&1";
    FILE* p = popen(full.c_str(), "r");
    if (!p) return false;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) log.append(buf, n);
    return pclose(p) == 0;
}

nvrtcResult nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCreateProgram(Program** prog, const char* src, const char*, int, const char* const*,
                               const char* const*) {
    if (!src) return NVRTC_ERROR_INVALID_INPUT;
    *prog = new Program{src, "", ""};
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(Program** prog) {
    delete *prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCompileProgram(Program* prog, int, const char* const*) {
    std::string dir = EMU_CACHE_DIR;
    mkdir(dir.c_str(), 0755);
    std::string tag = std::to_string(getpid()) + "-" + std::to_string((unsigned long long)(uintptr_t)prog);
    // The kernels' names: preprocess with __global__ marked (a macro may make the names).
    std::string pre_src = dir + "/names-" + tag + ".cu";
    {
        std::ofstream f(pre_src);
        f << "#define __global__ EMU_GLOBAL_MARK\n#define __launch_bounds__(...)\n" << prog->source;
    }
    std::string pre_out = dir + "/names-" + tag + ".i";
    if (!run(compiler() + " -E -P -x c++ " + pre_src + " -o " + pre_out, prog->log)) {
        unlink(pre_src.c_str());
        return NVRTC_ERROR_COMPILATION;
    }
    std::string pre = read_file(pre_out);
    unlink(pre_src.c_str());
    unlink(pre_out.c_str());
    std::set<std::string> names;
    std::regex kernel("EMU_GLOBAL_MARK\\s+void\\s+(\\w+)\\s*\\(");
    for (std::sregex_iterator it(pre.begin(), pre.end(), kernel), end; it != end; ++it) names.insert((*it)[1]);

    std::string unit = "#include \"" EMU_DIR "/kernel_runtime.h\"\n" + prog->source + "\n";
    for (const std::string& n : names)
        unit += "extern \"C\" void emu_launch_" + n + "(void** args, dim3 grid, dim3 block) { emu::run(\"" + n +
                "\", " + n + ", args, grid, block); }\n";
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", fnv1a(unit + read_file(EMU_DIR "/kernel_runtime.h")));
    std::string library = dir + "/kernels-" + hash + ".so";
    struct stat st;
    if (stat(library.c_str(), &st) != 0) {
        std::string src = dir + "/kernels-" + tag + ".cu", tmp = library + "." + tag;
        {
            std::ofstream f(src);
            f << unit;
        }
        // -fno-strict-aliasing: kernels move bf16 through reinterpret_cast'ed 4- and 16-byte
        // types (CUDA's idiom for vector loads), which the GPU's compiler honours.
        bool ok = run(compiler() + " -std=c++17 -O2 -fno-strict-aliasing -g -shared -fPIC -w -x c++ " + src + " -o " + tmp, prog->log);
        unlink(src.c_str());
        if (!ok || rename(tmp.c_str(), library.c_str()) != 0) {
            unlink(tmp.c_str());
            return NVRTC_ERROR_COMPILATION;
        }
    }
    prog->ptx = "// nanogpt cuda emulator " EMU_BUILD ": " + library + "\n";
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetPTXSize(Program* prog, size_t* size) {
    *size = prog->ptx.size() + 1;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetPTX(Program* prog, char* ptx) {
    memcpy(ptx, prog->ptx.c_str(), prog->ptx.size() + 1);
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetProgramLogSize(Program* prog, size_t* size) {
    *size = prog->log.size() + 1;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetProgramLog(Program* prog, char* log) {
    memcpy(log, prog->log.c_str(), prog->log.size() + 1);
    return NVRTC_SUCCESS;
}
const char* nvrtcGetErrorString(nvrtcResult r) { return r == NVRTC_SUCCESS ? "NVRTC_SUCCESS" : "NVRTC_ERROR (emulator)"; }

}  // extern "C"
