// TensorRT plugin CrossSelectiveScan (IPluginV3, TensorRT >= 10): a thin adapter between
// TensorRT's interfaces and plugin_logic.h (rules, tested without TensorRT) and the CUDA
// kernel's C ABI (tinyvim_scan.h). Built only when NvInfer.h is found (CMakeLists.txt).
//
// A TensorRT "plugin shared library": it exports getCreators() and setLoggerFinder(), which
// IPluginRegistry::loadLibrary calls (Python: trt.get_plugin_registry().load_library(path);
// trtexec --dynamicPlugins / --setPluginsToSerialize). It never registers itself when
// loaded: loadLibrary fails if a creator it is handed is already registered, and the
// library needs no libnvinfer at link time. Loaders that only dlopen (trtexec
// --staticPlugins, polygraphy --plugins) use libtinyvim_trt_plugin_autoreg.so instead
// (trt_autoregister.cpp), which registers these same creators at load time.
//
// The plugin's identity and fields are declared in tinyvim/contract.py (SCAN_PLUGIN);
// tests/test_trt_contract.py checks this library against that declaration through
// trt_contract_check.cpp, compiled against TensorRT's real headers.
#include <NvInfer.h>
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "plugin_logic.h"
#include "tinyvim_scan.h"

#if NV_TENSORRT_MAJOR < 10
#error "the CrossSelectiveScan plugin implements IPluginV3 and needs TensorRT >= 10"
#endif

namespace tinyvim {
namespace plugin {
namespace {

using namespace nvinfer1;

std::atomic<ILoggerFinder*> g_logger_finder{nullptr};

void log_error(const std::string& msg) noexcept {
    ILoggerFinder* finder = g_logger_finder.load();
    ILogger* logger = finder ? finder->findLogger() : nullptr;
    if (logger)
        logger->log(ILogger::Severity::kERROR, msg.c_str());
    else
        std::fprintf(stderr, "[tinyvim] %s\n", msg.c_str());
}

IoType to_io(DataType t) {
    switch (t) {
        case DataType::kFLOAT: return IoType::kFloat;
        case DataType::kHALF: return IoType::kHalf;
        case DataType::kBF16: return IoType::kBF16;
        default: return IoType::kUnsupported;
    }
}

Shape to_shape(const Dims& d) {
    Shape s;
    s.nb_dims = d.nbDims < 0 ? 0 : (d.nbDims > 8 ? 8 : d.nbDims);
    for (int i = 0; i < s.nb_dims; ++i) s.d[i] = d.d[i];
    return s;
}

std::vector<PluginField> to_plugin_fields(const std::vector<Field>& fields) {
    std::vector<PluginField> out;
    for (const Field& f : fields)
        out.emplace_back(f.name, f.data, static_cast<PluginFieldType>(static_cast<int32_t>(f.type)), f.length);
    return out;
}

class CrossScanPlugin final : public IPluginV3,
                              public IPluginV3OneCore,
                              public IPluginV3OneBuild,
                              public IPluginV3OneRuntime {
public:
    explicit CrossScanPlugin(const ScanParams& params) : params_(params) {
        fields_ = to_plugin_fields(fields_to_serialize(params_));
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
    }
    CrossScanPlugin(const CrossScanPlugin&) = delete;
    CrossScanPlugin& operator=(const CrossScanPlugin&) = delete;
    ~CrossScanPlugin() override = default;

    // ---- IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override {
        try {
            return new CrossScanPlugin(params_);
        } catch (const std::exception& e) {
            log_error(std::string(kPluginName) + ": clone failed: " + e.what());
            return nullptr;
        }
    }

    // ---- IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // ---- IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return kNbOutputs; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept override {
        if (nbOutputs != kNbOutputs) return fail("expects 1 output");
        std::vector<Shape> shapes;
        for (int32_t i = 0; i < nbInputs; ++i) shapes.push_back(to_shape(in[i].desc.dims));
        std::string err;
        if (!check_input_shapes(shapes.data(), nbInputs, params_, &err)) return fail(err);
        return 0;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != kNbOutputs || nbInputs != kNbInputs) return fail("expects 7 inputs and 1 output");
        IoType types[kNbInputs];
        for (int32_t i = 0; i < kNbInputs; ++i) types[i] = to_io(inputTypes[i]);
        IoType out;
        std::string err;
        if (!output_type(types, nbInputs, &out, &err)) return fail(err);
        outputTypes[0] = inputTypes[0];   // y has x's type
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                            int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                            IExprBuilder& /*exprBuilder*/) noexcept override {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) return fail("expects 7 inputs and 1 output");
        outputs[0] = inputs[0];           // y has x's shape, symbolically (dynamic batch included)
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= nbInputs + nbOutputs)
            return false;
        TensorDesc descs[kNbInputs + kNbOutputs];
        for (int32_t i = 0; i <= pos; ++i)   // positions > pos hold no valid values yet
            descs[i] = TensorDesc{to_io(inOut[i].desc.type), inOut[i].desc.format == TensorFormat::kLINEAR};
        return supports_combination(pos, descs, nbInputs, nbOutputs);
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override {
        if (nbInputs != kNbInputs || inputs[0].max.nbDims != 4) return 0;
        // Sized for the profile's largest x: enough for any smaller shape too.
        const Dims& m = inputs[0].max;
        return tinyvim_cross_scan_cuda_workspace_size(static_cast<int>(m.d[0]), static_cast<int>(m.d[1]),
                                                      static_cast<int>(m.d[2]), static_cast<int>(m.d[3]),
                                                      params_.d_state, 0);
    }

    // ---- IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                          int32_t nbOutputs) noexcept override {
        if (nbOutputs != kNbOutputs) return fail("expects 1 output");
        std::vector<Shape> shapes;
        for (int32_t i = 0; i < nbInputs; ++i) shapes.push_back(to_shape(in[i].dims));
        std::string err;
        if (!check_input_shapes(shapes.data(), nbInputs, params_, &err)) return fail(err);
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override {
        Shape shapes[kNbInputs];
        for (int32_t i = 0; i < kNbInputs; ++i) shapes[i] = to_shape(inputDesc[i].dims);
        LaunchArgs a;
        std::string err;
        if (!make_launch_args(shapes, kNbInputs, to_io(inputDesc[0].type), params_, &a, &err)) return fail(err);
        const size_t ws = tinyvim_cross_scan_cuda_workspace_size(a.B, a.D, a.H, a.W, a.N, a.dtype);
        const int rc = tinyvim_cross_scan_cuda(
            inputs[0], inputs[1], inputs[2], inputs[3], static_cast<const float*>(inputs[4]),
            static_cast<const float*>(inputs[5]), static_cast<const float*>(inputs[6]), outputs[0],
            a.B, a.D, a.H, a.W, a.N, a.dtype, workspace, ws, static_cast<void*>(stream));
        if (rc != 0)
            return fail(std::string("kernel launch failed: ") + tinyvim_cross_scan_cuda_error_string(rc));
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &collection_; }

private:
    static int32_t fail(const std::string& msg) noexcept {
        log_error(msg.rfind(kPluginName, 0) == 0 ? msg : std::string(kPluginName) + ": " + msg);
        return 1;
    }

    ScanParams params_;
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};
};

class CrossScanPluginCreator final : public IPluginCreatorV3One {
public:
    CrossScanPluginCreator() {
        names_ = to_plugin_fields(advertised_fields());
        collection_.nbFields = static_cast<int32_t>(names_.size());
        collection_.fields = names_.data();
    }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc,
                            TensorRTPhase /*phase*/) noexcept override {
        try {
            std::vector<Field> fields;
            for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
                const PluginField& f = fc->fields[i];
                fields.push_back(Field{f.name, f.data, static_cast<FieldType>(static_cast<int32_t>(f.type)), f.length});
            }
            ScanParams params;
            std::string err;
            if (!parse_fields(fields.data(), static_cast<int32_t>(fields.size()), &params, &err)) {
                log_error(err);
                return nullptr;
            }
            return new CrossScanPlugin(params);
        } catch (const std::exception& e) {
            log_error(std::string(kPluginName) + ": createPlugin failed: " + e.what());
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<PluginField> names_;
    PluginFieldCollection collection_{};
};

}  // namespace
}  // namespace plugin
}  // namespace tinyvim

// The two entry points of a plugin shared library (names and signatures from TensorRT's
// developer guide; TensorRT calls setLoggerFinder first, then getCreators).
extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    tinyvim::plugin::g_logger_finder.store(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static tinyvim::plugin::CrossScanPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

}  // extern "C"
