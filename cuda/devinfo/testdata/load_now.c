/* Loads libgradnormlorp.so (argv[1]) with RTLD_NOW, or RTLD_LAZY when
 * argv[2] is "lazy" (run under LD_BIND_NOW=1), and asks it for GPU 0. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "gradnormlorp.h"

int main(int argc, char **argv) {
    int lazy = argc > 2 && strcmp(argv[2], "lazy") == 0;
    void *h = dlopen(argv[1], lazy ? RTLD_LAZY : RTLD_NOW);
    if (h == NULL) {
        printf("dlopen failed: %s\n", dlerror());
        return 2;
    }
    gnlp_status (*info)(int32_t, gnlp_gpu_info *) = (gnlp_status(*)(int32_t, gnlp_gpu_info *))dlsym(h, "gnlp_device_info");
    const char *(*last_error)(void) = (const char *(*)(void))dlsym(h, "gnlp_last_error");
    if (info == NULL || last_error == NULL) {
        printf("missing symbols\n");
        return 2;
    }
    gnlp_gpu_info out;
    gnlp_status st = info(0, &out);
    if (st == GNLP_OK) {
        printf("status 0: %s, %lld bytes, driver %s, CUDA %d\n", out.name, (long long)out.memory_total,
               out.driver_version, (int)out.cuda_driver_version);
    } else {
        printf("status %d: %s\n", (int)st, last_error());
    }
    return 0;
}
