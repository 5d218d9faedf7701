// Everything the TensorRT plugin decides, in plain C++17 with no TensorRT or CUDA headers,
// so that it is unit-tested in CI (test_plugin_logic.cpp) where TensorRT is not available.
// trt_plugin.cpp only translates between these types and TensorRT's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tinyvim {
namespace plugin {

// Identity of the plugin; the ONNX node CrossSelectiveScan (domain "tinyvim") carries
// plugin_version="1" and plugin_namespace="tinyvim" so the ONNX parser finds it.
constexpr const char* kPluginName = "CrossSelectiveScan";
constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "tinyvim";
constexpr int kNbInputs = 7;   // x, delta, Bs, Cs, A, Ds, delta_bias (op contract order)
constexpr int kNbOutputs = 1;  // y
constexpr const char* kInputNames[kNbInputs] = {"x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias"};

// Mirrors nvinfer1::PluginFieldType's numeric values for the types we read or write.
enum class FieldType : int32_t { kFloat32 = 1, kInt8 = 3, kInt16 = 4, kInt32 = 5, kChar = 6, kInt64 = 10, kOther = -1 };

// A PluginField without TensorRT: name, data, type, number of elements.
struct Field {
    const char* name;
    const void* data;
    FieldType type;
    int32_t length;
};

// Element types the plugin's tensors may take.
enum class IoType : int32_t { kFloat = 0, kHalf = 1, kBF16 = 2, kUnsupported = -1 };

// The plugin's state: all that is serialized into an engine.
struct ScanParams {
    int32_t d_state = 0;
    bool operator==(const ScanParams& o) const { return d_state == o.d_state; }
};

// Parses creator/deserialization fields. Accepts d_state as int32 or int64 (length 1,
// 1..16); ignores plugin_version/plugin_namespace (the ONNX parser may forward them);
// rejects any other field, so that a misspelt attribute fails at build time instead
// of silently using a default. Returns false with a one-line message in *error.
bool parse_fields(const Field* fields, int32_t nb_fields, ScanParams* out, std::string* error);

// Fields to serialize (points into `params`, which must outlive the result).
std::vector<Field> fields_to_serialize(const ScanParams& params);

// Names and types the creator advertises (getFieldNames).
std::vector<Field> advertised_fields();

// A tensor's dims as TensorRT reports them (-1 = not known yet, at build time).
struct Shape {
    int32_t nb_dims = 0;
    int64_t d[8] = {};
};

// Checks the seven input shapes against each other and d_state (wildcards skip a check).
bool check_input_shapes(const Shape* inputs, int32_t nb_inputs, const ScanParams& params,
                        std::string* error);

// Output shape = x's shape.
Shape output_shape(const Shape* inputs, int32_t nb_inputs);

// Output type = x's type (false if x's type is unsupported).
bool output_type(const IoType* input_types, int32_t nb_inputs, IoType* out, std::string* error);

// supportsFormatCombination: every tensor linear; x in {float, half, bf16}; delta, Bs, Cs
// and y of x's type; A, Ds, delta_bias float32. Decides position `pos` from positions
// 0..pos only (TensorRT's contract).
struct TensorDesc {
    IoType type;
    bool linear;
};
bool supports_combination(int32_t pos, const TensorDesc* in_out, int32_t nb_inputs, int32_t nb_outputs);

// Kernel call arguments derived from concrete shapes.
struct LaunchArgs {
    int32_t B = 0, D = 0, H = 0, W = 0, N = 0;
    int32_t dtype = 0;  // tinyvim_scan.h dtype code
};
bool make_launch_args(const Shape* inputs, int32_t nb_inputs, IoType type,
                      const ScanParams& params, LaunchArgs* out, std::string* error);

}  // namespace plugin
}  // namespace tinyvim
