// Host-side rules of the CrossSelectiveScan TensorRT plugin (see plugin_logic.h).
#include "plugin_logic.h"

#include <climits>
#include <cstring>

#include "tinyvim_scan.h"

namespace tinyvim {
namespace plugin {

namespace {

bool fail(std::string* error, const std::string& msg) {
    if (error) *error = std::string(kPluginName) + ": " + msg;
    return false;
}

std::string dims_str(const Shape& s) {
    std::string r = "(";
    for (int i = 0; i < s.nb_dims; ++i) r += (i ? ", " : "") + std::to_string(s.d[i]);
    return r + ")";
}

// a and b agree unless one is a wildcard (-1, unknown at build time).
bool same(int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; }

}  // namespace

bool parse_fields(const Field* fields, int32_t nb_fields, ScanParams* out, std::string* error) {
    ScanParams p;
    bool seen_state = false;
    for (int32_t i = 0; i < nb_fields; ++i) {
        const Field& f = fields[i];
        const std::string name = f.name ? f.name : "";
        if (name == "plugin_version" || name == "plugin_namespace") continue;
        if (name != "d_state") return fail(error, "unknown attribute '" + name + "' (expected d_state)");
        if (f.length != 1 || f.data == nullptr)
            return fail(error, "attribute d_state must be a single integer");
        int64_t v;
        if (f.type == FieldType::kInt32) {
            int32_t v32;
            std::memcpy(&v32, f.data, sizeof v32);
            v = v32;
        } else if (f.type == FieldType::kInt64) {
            std::memcpy(&v, f.data, sizeof v);
        } else {
            return fail(error, "attribute d_state must be an integer (int32 or int64)");
        }
        if (v < 1 || v > TINYVIM_SCAN_MAX_STATE)
            return fail(error, "d_state = " + std::to_string(v) + " is not supported (1.." +
                                   std::to_string(TINYVIM_SCAN_MAX_STATE) + ")");
        p.d_state = static_cast<int32_t>(v);
        seen_state = true;
    }
    if (!seen_state) return fail(error, "attribute d_state is missing");
    *out = p;
    return true;
}

std::vector<Field> fields_to_serialize(const ScanParams& params) {
    return {Field{"d_state", &params.d_state, FieldType::kInt32, 1}};
}

std::vector<Field> advertised_fields() {
    return {Field{"d_state", nullptr, FieldType::kInt32, 1}};
}

bool check_input_shapes(const Shape* in, int32_t nb_inputs, const ScanParams& params,
                        std::string* error) {
    if (nb_inputs != kNbInputs)
        return fail(error, "expects 7 inputs (x, delta, Bs, Cs, A, Ds, delta_bias), got " +
                               std::to_string(nb_inputs));
    static const int kRanks[kNbInputs] = {4, 4, 5, 5, 2, 1, 1};
    for (int i = 0; i < kNbInputs; ++i)
        if (in[i].nb_dims != kRanks[i])
            return fail(error, std::string(kInputNames[i]) + " must have rank " +
                                   std::to_string(kRanks[i]) + ", got " + dims_str(in[i]));
    const Shape& x = in[0];
    const int64_t B = x.d[0], D = x.d[1], H = x.d[2], W = x.d[3];
    const int64_t D4 = D < 0 ? -1 : 4 * D;
    const int64_t N = params.d_state;
    // The state size is both an attribute (d_state) and a tensor dimension: say which one
    // disagrees, since a node whose attribute was written wrongly is the likely cause.
    static const struct { int input; int dim; const char* layout; } kStateDims[] = {
        {2, 2, "(B, 4, N, H, W)"}, {3, 2, "(B, 4, N, H, W)"}, {4, 1, "(4D, N)"}};
    for (const auto& s : kStateDims) {
        const int64_t n = in[s.input].d[s.dim];
        if (n >= 0 && n != N)
            return fail(error, "d_state = " + std::to_string(N) + " (the node's attribute) but " +
                                   kInputNames[s.input] + " has N = " + std::to_string(n) + " (dim " +
                                   std::to_string(s.dim) + " of " + s.layout + ", shape " +
                                   dims_str(in[s.input]) + "): d_state must equal the state size of " +
                                   "Bs, Cs and A; re-export the model");
    }
    // Expected dims per input (-1 where x leaves them open).
    const int64_t want[kNbInputs][5] = {
        {B, D, H, W, 0}, {B, D4, H, W, 0}, {B, 4, N, H, W}, {B, 4, N, H, W},
        {D4, N, 0, 0, 0}, {D4, 0, 0, 0, 0}, {D4, 0, 0, 0, 0}};
    for (int i = 1; i < kNbInputs; ++i) {
        for (int j = 0; j < kRanks[i]; ++j) {
            if (!same(in[i].d[j], want[i][j])) {
                Shape w;
                w.nb_dims = kRanks[i];
                for (int k = 0; k < kRanks[i]; ++k) w.d[k] = want[i][k];
                return fail(error, std::string(kInputNames[i]) + " must be " + dims_str(w) +
                                       " (-1: any) for x " + dims_str(x) + " and d_state " +
                                       std::to_string(N) + ", got " + dims_str(in[i]));
            }
        }
    }
    return true;
}

Shape output_shape(const Shape* inputs, int32_t nb_inputs) {
    return nb_inputs > 0 ? inputs[0] : Shape{};
}

bool output_type(const IoType* input_types, int32_t nb_inputs, IoType* out, std::string* error) {
    if (nb_inputs < 1) return fail(error, "no inputs");
    if (input_types[0] == IoType::kUnsupported)
        return fail(error, "x must be float32, float16 or bfloat16");
    *out = input_types[0];
    return true;
}

bool supports_combination(int32_t pos, const TensorDesc* in_out, int32_t nb_inputs, int32_t nb_outputs) {
    if (nb_inputs != kNbInputs || nb_outputs != kNbOutputs || pos < 0 || pos >= nb_inputs + nb_outputs)
        return false;
    const TensorDesc& t = in_out[pos];
    if (!t.linear) return false;
    switch (pos) {
        case 0: return t.type != IoType::kUnsupported;
        case 4: case 5: case 6: return t.type == IoType::kFloat;   // A, Ds, delta_bias
        default: return t.type == in_out[0].type;                  // delta, Bs, Cs, y
    }
}

bool make_launch_args(const Shape* in, int32_t nb_inputs, IoType type, const ScanParams& params,
                      LaunchArgs* out, std::string* error) {
    if (!check_input_shapes(in, nb_inputs, params, error)) return false;
    for (int i = 0; i < 4; ++i)
        if (in[0].d[i] < 0 || in[0].d[i] > INT_MAX)
            return fail(error, "x has no concrete shape at execution: " + dims_str(in[0]));
    if (type == IoType::kUnsupported) return fail(error, "x must be float32, float16 or bfloat16");
    LaunchArgs a;
    a.B = static_cast<int32_t>(in[0].d[0]);
    a.D = static_cast<int32_t>(in[0].d[1]);
    a.H = static_cast<int32_t>(in[0].d[2]);
    a.W = static_cast<int32_t>(in[0].d[3]);
    a.N = params.d_state;
    a.dtype = static_cast<int32_t>(type);   // IoType values are the tinyvim_scan.h codes
    *out = a;
    return true;
}

}  // namespace plugin
}  // namespace tinyvim
