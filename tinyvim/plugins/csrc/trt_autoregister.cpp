// libtinyvim_trt_plugin_autoreg.so: registers the creators of libtinyvim_trt_plugin.so (its
// one dependency) with TensorRT's plugin registry when it is loaded. For loaders that only
// dlopen a library and expect it to register itself: trtexec --staticPlugins, polygraphy
// --plugins, ctypes.CDLL. Everything that can call IPluginRegistry::loadLibrary (tinyvim,
// trtexec --dynamicPlugins) loads libtinyvim_trt_plugin.so that way instead; do not load both
// into one process (loadLibrary refuses creators that are already registered).
//
// No link-time dependency on libnvinfer: getPluginRegistry is looked up at load time, in the
// process first (trtexec, or Python after `import tensorrt`), then as libnvinfer.so.<major>
// on the library search path. Without it this library registers nothing and says so.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace {

using RegistryGetter = nvinfer1::IPluginRegistry* (*)();

RegistryGetter find_registry_getter() {
    if (void* sym = dlsym(RTLD_DEFAULT, "getPluginRegistry")) return reinterpret_cast<RegistryGetter>(sym);
    const std::string soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    // Already loaded but not global (Python extension modules load it RTLD_LOCAL) ...
    void* handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    // ... or not loaded yet: load it as the plugin's own dependency would be.
    if (!handle) handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_GLOBAL);
    return handle ? reinterpret_cast<RegistryGetter>(dlsym(handle, "getPluginRegistry")) : nullptr;
}

struct AutoRegister {
    AutoRegister() {
        RegistryGetter get_registry = find_registry_getter();
        nvinfer1::IPluginRegistry* registry = get_registry ? get_registry() : nullptr;
        if (!registry) {
            std::fprintf(stderr, "[tinyvim] libtinyvim_trt_plugin_autoreg.so: TensorRT %d (libnvinfer.so.%d) is not "
                                 "loaded or on the library path: nothing registered; load libtinyvim_trt_plugin.so "
                                 "with IPluginRegistry::loadLibrary instead\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MAJOR);
            return;
        }
        int32_t n = 0;
        nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
        for (int32_t i = 0; i < n; ++i) {
            if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
            auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
            // Registered already (this library loaded twice, or the plugin library loaded by
            // loadLibrary first): registering again would only log an error.
            if (registry->getCreator(creator->getPluginName(), creator->getPluginVersion(),
                                     creator->getPluginNamespace()))
                continue;
            if (!registry->registerCreator(*creator, creator->getPluginNamespace()))
                std::fprintf(stderr, "[tinyvim] could not register plugin %s version %s in namespace %s\n",
                             creator->getPluginName(), creator->getPluginVersion(), creator->getPluginNamespace());
        }
    }
};

const AutoRegister g_auto_register;

}  // namespace
