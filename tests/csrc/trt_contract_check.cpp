// tinyvim_trt_contract_check: drives libtinyvim_trt_plugin.so the way TensorRT does, compiled
// against TensorRT's real headers, with no libnvinfer (CI has none). Test tool; run by
// tests/test_trt_contract.py.
//
//   describe LIB         creator identity and advertised fields (checked against tinyvim.contract)
//   nodes LIB SPEC       each ONNX node of SPEC through what TensorRT's ONNX parser and builder
//                        call, in their order (see run_node)
//   register LIB AUTOREG what loading each library registers (this program exports a
//                        recording getPluginRegistry in place of libnvinfer's)
//   enqueue LIB SPEC     as `nodes`, then, for each node with a `data DIR` line, what an engine
//                        does at run time: createPlugin(kRUNTIME) from the serialized fields,
//                        attachToContext, onShapeChange and enqueue on host buffers read from
//                        DIR/in<i>.bin (raw, the node's dtype, the `opt` shape), writing
//                        DIR/out.bin. For the plugin built on the CPU build of the kernel
//                        (tests/cuda_on_cpu), where "device" memory is host memory; the
//                        stream is a token (0x5EED) that the CPU runtime records, and its
//                        counters (tinyvim_cuda_on_cpu_stats, found through the library's
//                        dependencies) are reported.
//
// Loading follows IPluginRegistry::loadLibrary: dlopen, setLoggerFinder, getCreators. Node
// attributes are turned into PluginFields by the ONNX parser's rules (onnx-tensorrt
// FallbackPluginImporter / loadFields): the creator is found by op_type + plugin_version
// (default "1") + plugin_namespace (default ""); only the field names the creator
// advertises in getFieldNames() are forwarded, a missing one being a warning; INT -> kINT32
// (narrowed), FLOAT -> kFLOAT32, STRING -> kCHAR, INTS -> kINT32 array, FLOATS -> kFLOAT32
// array; a null createPlugin fails with "Could not create the plugin.".
//
// SPEC is line-based text written by the test (one block per node, values without spaces):
//   node NAME / op TYPE / attr NAME INT|FLOAT|STRING|INTS|FLOATS VALUE... /
//   input NAME DTYPE DIM... / output NAME DTYPE DIM... / sym NAME MIN OPT MAX / data DIR / end
// DIM is an integer or a symbol (a dynamic dimension, given a range by a `sym` line); a
// STRING value "-" is the empty string. Output per node: "node NAME ok ..." or
// "node NAME error MESSAGE"; parser warnings as "warning NAME MESSAGE".
#include <NvInfer.h>
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

// ------------------------------------------------------------------ logging
class CaptureLogger final : public ILogger {
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kWARNING) messages_.emplace_back(msg ? msg : "");
    }
    std::string take() {
        std::string all;
        for (const auto& m : messages_) all += (all.empty() ? "" : " | ") + m;
        messages_.clear();
        return all;
    }

private:
    std::vector<std::string> messages_;
};

class LoggerFinder final : public ILoggerFinder {
public:
    explicit LoggerFinder(ILogger* logger) : logger_(logger) {}
    ~LoggerFinder() override = default;
    ILogger* findLogger() override { return logger_; }

private:
    ILogger* logger_;
};

// ------------------------------------------------------------------ symbolic shapes
// IDimensionExpr / IExprBuilder are TensorRT's, implemented through their apiv interfaces
// (NvInferImpl.h): a dimension is a constant or a named symbol (batch, H, W of a dynamic input).
class Expr final : public IDimensionExpr {
public:
    Expr(bool constant, int64_t value, std::string text) : impl_(constant, value), text_(std::move(text)) {
        mImpl = &impl_;
    }
    ~Expr() noexcept override = default;
    const std::string& text() const { return text_; }

private:
    struct Impl final : apiv::VDimensionExpr {
        Impl(bool c, int64_t v) : constant(c), value(v) {}
        bool isConstant() const override { return constant; }
        int64_t getConstantValue() const override { return constant ? value : -1; }
        bool isSizeTensor() const override { return false; }
        bool constant;
        int64_t value;
    } impl_;
    std::string text_;
};

class ExprBuilder final : public IExprBuilder {
public:
    ExprBuilder() : impl_(this) { mImpl = &impl_; }
    ~ExprBuilder() noexcept override = default;

    const Expr* make_constant(int64_t v) { return &exprs_.emplace_back(true, v, std::to_string(v)); }
    const Expr* make_symbol(const std::string& name) { return &exprs_.emplace_back(false, -1, name); }

private:
    struct Impl final : apiv::VExprBuilder {
        explicit Impl(ExprBuilder* o) : owner(o) {}
        IDimensionExpr const* constant(int64_t value) override { return owner->make_constant(value); }
        IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a,
                                        IDimensionExpr const& b) override {
            if (a.isConstant() && b.isConstant()) {
                const int64_t x = a.getConstantValue(), y = b.getConstantValue();
                switch (op) {
                    case DimensionOperation::kSUM: return owner->make_constant(x + y);
                    case DimensionOperation::kPROD: return owner->make_constant(x * y);
                    case DimensionOperation::kMAX: return owner->make_constant(x > y ? x : y);
                    case DimensionOperation::kMIN: return owner->make_constant(x < y ? x : y);
                    case DimensionOperation::kSUB: return owner->make_constant(x - y);
                    case DimensionOperation::kEQUAL: return owner->make_constant(x == y);
                    case DimensionOperation::kLESS: return owner->make_constant(x < y);
                    case DimensionOperation::kFLOOR_DIV: return y ? owner->make_constant(x / y) : nullptr;
                    case DimensionOperation::kCEIL_DIV: return y ? owner->make_constant((x + y - 1) / y) : nullptr;
                }
                return nullptr;
            }
            static const char* const kOps[] = {"+", "*", "max", "min", "-", "==", "<", "//", "ceildiv"};
            const auto& ea = static_cast<const Expr&>(a);
            const auto& eb = static_cast<const Expr&>(b);
            return owner->make_symbol("(" + ea.text() + " " + kOps[static_cast<int>(op)] + " " + eb.text() + ")");
        }
        IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
            return nullptr;   // the scan has no data-dependent output shape
        }
        ExprBuilder* owner;
    } impl_;
    std::deque<Expr> exprs_;   // stable addresses
};

// ------------------------------------------------------------------ the node spec
struct Attr {
    std::string type;                 // INT FLOAT STRING INTS FLOATS
    std::vector<std::string> values;
};
struct TensorSpec {
    std::string name, dtype;
    std::vector<std::string> dims;    // integers or symbols
};
struct NodeSpec {
    std::string name, op;
    std::map<std::string, Attr> attrs;
    std::vector<TensorSpec> inputs, outputs;
    std::map<std::string, std::array<int64_t, 3>> syms;   // symbol -> min, opt, max
    std::string data;                                     // enqueue mode: folder of in<i>.bin
};

std::vector<NodeSpec> read_spec(const char* path) {
    std::ifstream in(path);
    std::vector<NodeSpec> nodes;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string key;
        if (!(ls >> key)) continue;
        if (key == "node") {
            nodes.emplace_back();
            ls >> nodes.back().name;
            continue;
        }
        if (nodes.empty() || key == "end") continue;
        NodeSpec& n = nodes.back();
        if (key == "op") {
            ls >> n.op;
        } else if (key == "attr") {
            std::string name;
            Attr a;
            ls >> name >> a.type;
            for (std::string v; ls >> v;) a.values.push_back(v == "-" ? "" : v);
            n.attrs[name] = a;
        } else if (key == "input" || key == "output") {
            TensorSpec t;
            ls >> t.name >> t.dtype;
            for (std::string d; ls >> d;) t.dims.push_back(d);
            (key == "input" ? n.inputs : n.outputs).push_back(t);
        } else if (key == "data") {
            ls >> n.data;
        } else if (key == "sym") {
            std::string name;
            ls >> name;
            ls >> n.syms[name][0] >> n.syms[name][1] >> n.syms[name][2];
        }
    }
    return nodes;
}

bool is_int(const std::string& s) {
    return !s.empty() && s.find_first_not_of("-0123456789") == std::string::npos;
}

bool to_dtype(const std::string& onnx, DataType* out) {
    static const std::map<std::string, DataType> kTypes = {
        {"FLOAT", DataType::kFLOAT}, {"FLOAT16", DataType::kHALF}, {"BFLOAT16", DataType::kBF16},
        {"INT32", DataType::kINT32}, {"INT64", DataType::kINT64}, {"INT8", DataType::kINT8}};
    auto it = kTypes.find(onnx);
    if (it == kTypes.end()) return false;
    *out = it->second;
    return true;
}

// ------------------------------------------------------------------ the plugin library
struct Library {
    void* handle = nullptr;
    std::vector<IPluginCreatorInterface*> creators;
};

bool load_library(const char* path, ILoggerFinder* finder, Library* lib) {
    lib->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib->handle) {
        std::printf("error dlopen %s\n", dlerror());
        return false;
    }
    using SetFinder = void (*)(ILoggerFinder*);
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    auto set_finder = reinterpret_cast<SetFinder>(dlsym(lib->handle, "setLoggerFinder"));
    auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib->handle, "getCreators"));
    if (!set_finder || !get_creators) {
        std::printf("error %s does not export setLoggerFinder and getCreators\n", path);
        return false;
    }
    set_finder(finder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = get_creators(n);
    lib->creators.assign(creators, creators + n);
    return true;
}

IPluginCreatorV3One* as_v3(IPluginCreatorInterface* c) {
    return std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0
               ? static_cast<IPluginCreatorV3One*>(c) : nullptr;
}

int describe(const Library& lib) {
    for (IPluginCreatorInterface* c : lib.creators) {
        IPluginCreatorV3One* v3 = as_v3(c);
        std::printf("creator %s %s %s %s\n", v3 ? v3->getPluginName() : "?", v3 ? v3->getPluginVersion() : "?",
                    v3 ? v3->getPluginNamespace() : "?", c->getInterfaceInfo().kind);
        if (!v3) continue;
        const PluginFieldCollection* fc = v3->getFieldNames();
        for (int32_t i = 0; fc && i < fc->nbFields; ++i)
            std::printf("field %s %d %d\n", fc->fields[i].name, static_cast<int>(fc->fields[i].type),
                        fc->fields[i].length);
    }
    return 0;
}

// Field values outlive the collection handed to createPlugin (the parser keeps them in a map).
struct FieldStore {
    std::deque<std::vector<int32_t>> ints;
    std::deque<std::vector<float>> floats;
    std::deque<std::string> strings;
    std::vector<PluginField> fields;
};

// loadFields of the ONNX parser: advertised names only, ONNX type -> PluginFieldType.
std::string load_fields(const NodeSpec& n, const PluginFieldCollection* names, FieldStore* store) {
    for (int32_t i = 0; names && i < names->nbFields; ++i) {
        const char* name = names->fields[i].name;
        auto it = n.attrs.find(name);
        if (it == n.attrs.end()) {
            std::printf("warning %s Attribute %s not found in plugin node!\n", n.name.c_str(), name);
            continue;
        }
        const Attr& a = it->second;
        if (a.type == "INT" || a.type == "INTS") {
            std::vector<int32_t>& v = store->ints.emplace_back();
            for (const auto& s : a.values) v.push_back(static_cast<int32_t>(std::stoll(s)));
            store->fields.emplace_back(name, v.data(), PluginFieldType::kINT32, static_cast<int32_t>(v.size()));
        } else if (a.type == "FLOAT" || a.type == "FLOATS") {
            std::vector<float>& v = store->floats.emplace_back();
            for (const auto& s : a.values) v.push_back(std::stof(s));
            store->fields.emplace_back(name, v.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(v.size()));
        } else if (a.type == "STRING") {
            std::string& v = store->strings.emplace_back(a.values.empty() ? "" : a.values[0]);
            store->fields.emplace_back(name, v.data(), PluginFieldType::kCHAR, static_cast<int32_t>(v.size()));
        } else {
            return "Attributes of type: " + a.type + " are unsupported as plugin fields.";
        }
    }
    return "";
}

size_t field_bytes(const PluginField& f) {
    switch (f.type) {
        case PluginFieldType::kINT32: case PluginFieldType::kFLOAT32: return 4u * static_cast<size_t>(f.length);
        case PluginFieldType::kINT64: case PluginFieldType::kFLOAT64: return 8u * static_cast<size_t>(f.length);
        default: return static_cast<size_t>(f.length);
    }
}

bool same_fields(const PluginFieldCollection* a, const PluginFieldCollection* b) {
    if (!a || !b || a->nbFields != b->nbFields) return false;
    for (int32_t i = 0; i < a->nbFields; ++i) {
        const PluginField &x = a->fields[i], &y = b->fields[i];
        if (std::strcmp(x.name, y.name) != 0 || x.type != y.type || x.length != y.length ||
            std::memcmp(x.data, y.data, field_bytes(x)) != 0)
            return false;
    }
    return true;
}

std::string dims_text(const DimsExprs& d) {
    std::string s = "(";
    for (int32_t i = 0; i < d.nbDims; ++i)
        s += (i ? "," : "") + (d.d[i] ? static_cast<const Expr*>(d.d[i])->text() : std::string("null"));
    return s + ")";
}

struct Plugin {   // a created IPluginV3 and its three capabilities
    std::unique_ptr<IPluginV3> owner;
    IPluginV3OneCore* core = nullptr;
    IPluginV3OneBuild* build = nullptr;
    IPluginV3OneRuntime* runtime = nullptr;
};

Plugin capabilities(IPluginV3* p) {
    Plugin r;
    r.owner.reset(p);
    if (!p) return r;
    r.core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    r.build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    r.runtime = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return r;
}

size_t element_size(DataType t) {
    switch (t) {
        case DataType::kFLOAT: case DataType::kINT32: return 4;
        case DataType::kHALF: case DataType::kBF16: return 2;
        case DataType::kINT64: return 8;
        default: return 1;
    }
}

size_t volume(const Dims& d) {
    size_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i) v *= static_cast<size_t>(d.d[i]);
    return v;
}

// What an engine does with the plugin at run time, on host buffers (see the header comment).
std::string enqueue_node(const NodeSpec& n, const Library& lib, IPluginV3OneRuntime* deserialized,
                         std::vector<PluginTensorDesc> concrete, int32_t nb_in, size_t workspace_bytes,
                         CaptureLogger& logger, std::string* info) {
    Plugin r = capabilities(deserialized->attachToContext(nullptr));
    if (!r.runtime) return "attachToContext failed: " + logger.take();
    const auto nb_out = static_cast<int32_t>(concrete.size()) - nb_in;
    if (r.runtime->onShapeChange(concrete.data(), nb_in, concrete.data() + nb_in, nb_out) != 0)
        return "attached plugin: onShapeChange failed: " + logger.take();
    std::vector<std::vector<unsigned char>> buffers(concrete.size());
    for (int32_t i = 0; i < nb_in; ++i) {
        const std::string path = n.data + "/in" + std::to_string(i) + ".bin";
        std::ifstream in(path, std::ios::binary);
        if (!in) return "cannot read " + path;
        buffers[i].assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        const size_t want = volume(concrete[i].dims) * element_size(concrete[i].type);
        if (buffers[i].size() != want)
            return path + " has " + std::to_string(buffers[i].size()) + " bytes, the shape needs " +
                   std::to_string(want);
    }
    // Outputs and workspace start as NaN bytes: nothing may rely on their contents. With the CPU
    // runtime's allocator (tinyvim_cuda_on_cpu_malloc, found through the library's dependencies),
    // every buffer is copied into memory that ends at an inaccessible page: an access past any of
    // them, the workspace of exactly getWorkspaceSize's bytes included, faults at once and the
    // runtime names the buffer on stderr.
    for (int32_t i = nb_in; i < nb_in + nb_out; ++i)
        buffers[i].assign(volume(concrete[i].dims) * element_size(concrete[i].type), 0xFF);
    std::vector<unsigned char> workspace(workspace_bytes, 0xFF);
    using Malloc = void* (*)(size_t, const char*);
    using Free = void (*)(void*);
    auto dmalloc = reinterpret_cast<Malloc>(dlsym(lib.handle, "tinyvim_cuda_on_cpu_malloc"));
    auto dfree = reinterpret_cast<Free>(dlsym(lib.handle, "tinyvim_cuda_on_cpu_free"));
    std::vector<void*> device(buffers.size() + 1, nullptr);
    auto place = [&](size_t k, std::vector<unsigned char>& host, const std::string& name) -> unsigned char* {
        if (!dmalloc || host.empty()) return host.empty() ? nullptr : host.data();
        device[k] = dmalloc(host.size(), name.c_str());
        if (device[k]) std::memcpy(device[k], host.data(), host.size());
        return static_cast<unsigned char*>(device[k]);
    };
    std::vector<const void*> ins;
    std::vector<void*> outs;
    for (int32_t i = 0; i < nb_in; ++i) ins.push_back(place(i, buffers[i], "in" + std::to_string(i)));
    for (int32_t i = nb_in; i < nb_in + nb_out; ++i) outs.push_back(place(i, buffers[i], "out" + std::to_string(i - nb_in)));
    void* ws = place(buffers.size(), workspace, "workspace");
    struct Release {
        std::vector<void*>& p;
        Free f;
        ~Release() {
            for (void* q : p)
                if (q && f) f(q);
        }
    } release{device, dfree};

    using Stats = int (*)(long long*, int);
    using Reset = void (*)();
    auto stats = reinterpret_cast<Stats>(dlsym(lib.handle, "tinyvim_cuda_on_cpu_stats"));
    auto reset = reinterpret_cast<Reset>(dlsym(lib.handle, "tinyvim_cuda_on_cpu_reset_stats"));
    if (reset) reset();
    const auto stream = reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(0x5EED));
    if (r.runtime->enqueue(concrete.data(), concrete.data() + nb_in, ins.data(), outs.data(), ws, stream) != 0)
        return "enqueue failed: " + logger.take();
    for (int32_t i = nb_in; i < nb_in + nb_out; ++i) {
        if (device[i]) std::memcpy(buffers[i].data(), device[i], buffers[i].size());
        const std::string path = n.data + "/out" + std::to_string(i - nb_in) + ".bin";
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(buffers[i].data()), static_cast<std::streamsize>(buffers[i].size()));
        if (!out.good()) return "cannot write " + path;
    }
    *info += " enqueued";
    if (stats) {
        long long s[8] = {};
        stats(s, 8);   // launches, max block, max grid x, max grid y, max smem, last stream, overruns, refused
        char buf[160];
        std::snprintf(buf, sizeof buf, " launches=%lld stream=0x%llx overruns=%lld refused=%lld", s[0], s[5], s[6],
                      s[7]);
        *info += buf;
    }
    return "";
}

// One node through the parser's and the builder's calls. Returns "" or the first failure;
// *info gets the output dtype/shape and workspace on success. With `enqueue` and a `data`
// folder, enqueue_node follows.
std::string run_node(const NodeSpec& n, const Library& lib, CaptureLogger& logger, std::string* info,
                     bool enqueue = false) {
    auto attr_text = [&](const char* key, const char* fallback) {
        auto it = n.attrs.find(key);
        return it == n.attrs.end() || it->second.values.empty() ? std::string(fallback) : it->second.values[0];
    };
    const std::string version = attr_text("plugin_version", "1"), ns = attr_text("plugin_namespace", "");
    IPluginCreatorV3One* creator = nullptr;
    for (IPluginCreatorInterface* c : lib.creators) {
        IPluginCreatorV3One* v3 = as_v3(c);
        if (v3 && n.op == v3->getPluginName() && version == v3->getPluginVersion() && ns == v3->getPluginNamespace())
            creator = v3;
    }
    if (!creator) return "Plugin not found, are the plugin name, version, and namespace correct?";

    FieldStore store;
    std::string err = load_fields(n, creator->getFieldNames(), &store);
    if (!err.empty()) return err;
    PluginFieldCollection fc{static_cast<int32_t>(store.fields.size()), store.fields.data()};
    Plugin p = capabilities(creator->createPlugin(n.name.c_str(), &fc, TensorRTPhase::kBUILD));
    if (!p.owner) return "Could not create the plugin. " + logger.take();
    if (!p.core || !p.build || !p.runtime) return "plugin lacks a core, build or runtime capability";
    if (std::strcmp(p.core->getPluginName(), creator->getPluginName()) != 0 ||
        std::strcmp(p.core->getPluginVersion(), creator->getPluginVersion()) != 0 ||
        std::strcmp(p.core->getPluginNamespace(), creator->getPluginNamespace()) != 0)
        return "plugin and creator disagree on name, version or namespace";

    const auto nb_in = static_cast<int32_t>(n.inputs.size()), nb_out = static_cast<int32_t>(n.outputs.size());
    if (p.build->getNbOutputs() != nb_out)
        return "getNbOutputs() = " + std::to_string(p.build->getNbOutputs()) + ", the node has " +
               std::to_string(nb_out);

    // Types: what the graph feeds, and what it expects back.
    std::vector<DataType> in_types(static_cast<size_t>(nb_in)), want_out(static_cast<size_t>(nb_out)),
        out_types(static_cast<size_t>(nb_out));
    for (int32_t i = 0; i < nb_in; ++i)
        if (!to_dtype(n.inputs[i].dtype, &in_types[i])) return "unknown dtype " + n.inputs[i].dtype;
    for (int32_t i = 0; i < nb_out; ++i)
        if (!to_dtype(n.outputs[i].dtype, &want_out[i])) return "unknown dtype " + n.outputs[i].dtype;
    if (p.build->getOutputDataTypes(out_types.data(), nb_out, in_types.data(), nb_in) != 0)
        return "getOutputDataTypes failed: " + logger.take();
    for (int32_t i = 0; i < nb_out; ++i)
        if (out_types[i] != want_out[i])
            return "getOutputDataTypes gives type " + std::to_string(static_cast<int>(out_types[i])) + " for " +
                   n.outputs[i].name + ", the graph has " + n.outputs[i].dtype;

    // Shapes, symbolically: constants stay constants, symbols must come back as themselves.
    ExprBuilder exprs;
    std::vector<DimsExprs> in_exprs(static_cast<size_t>(nb_in)), out_exprs(static_cast<size_t>(nb_out));
    for (int32_t i = 0; i < nb_in; ++i) {
        in_exprs[i].nbDims = static_cast<int32_t>(n.inputs[i].dims.size());
        for (size_t j = 0; j < n.inputs[i].dims.size(); ++j) {
            const std::string& d = n.inputs[i].dims[j];
            in_exprs[i].d[j] = is_int(d) ? exprs.make_constant(std::stoll(d)) : exprs.make_symbol(d);
        }
    }
    IExprBuilder& builder = exprs;
    if (p.build->getOutputShapes(in_exprs.data(), nb_in, nullptr, 0, out_exprs.data(), nb_out, builder) != 0)
        return "getOutputShapes failed: " + logger.take();
    for (int32_t i = 0; i < nb_out; ++i) {
        const TensorSpec& o = n.outputs[i];
        bool ok = out_exprs[i].nbDims == static_cast<int32_t>(o.dims.size());
        for (size_t j = 0; ok && j < o.dims.size(); ++j) {
            const IDimensionExpr* e = out_exprs[i].d[j];
            ok = e && (is_int(o.dims[j]) ? e->isConstant() && e->getConstantValue() == std::stoll(o.dims[j])
                                         : !e->isConstant() && static_cast<const Expr*>(e)->text() == o.dims[j]);
        }
        if (!ok) {
            std::string want = "(";
            for (size_t j = 0; j < o.dims.size(); ++j) want += (j ? "," : "") + o.dims[j];
            return "getOutputShapes gives " + dims_text(out_exprs[i]) + " for " + o.name + ", the graph has " +
                   want + ")";
        }
    }

    // Formats: linear tensors of the graph's types are accepted at every position; a
    // vectorized layout is not (the kernel reads plain row-major memory).
    std::vector<DynamicPluginTensorDesc> io(static_cast<size_t>(nb_in + nb_out));
    auto fill = [&](DynamicPluginTensorDesc& t, const TensorSpec& s, DataType type) -> std::string {
        t.desc.type = type;
        t.desc.format = TensorFormat::kLINEAR;
        t.desc.scale = 1.f;
        t.desc.dims.nbDims = t.min.nbDims = t.opt.nbDims = t.max.nbDims = static_cast<int32_t>(s.dims.size());
        for (size_t j = 0; j < s.dims.size(); ++j) {
            const std::string& d = s.dims[j];
            if (is_int(d)) {
                t.desc.dims.d[j] = t.min.d[j] = t.opt.d[j] = t.max.d[j] = std::stoll(d);
                continue;
            }
            auto it = n.syms.find(d);
            if (it == n.syms.end()) return "no range for symbol " + d;
            t.desc.dims.d[j] = -1;    // what TensorRT passes for a dynamic dimension at build time
            t.min.d[j] = it->second[0];
            t.opt.d[j] = it->second[1];
            t.max.d[j] = it->second[2];
        }
        return "";
    };
    for (int32_t i = 0; i < nb_in; ++i)
        if (!(err = fill(io[i], n.inputs[i], in_types[i])).empty()) return err;
    for (int32_t i = 0; i < nb_out; ++i)
        if (!(err = fill(io[nb_in + i], n.outputs[i], out_types[i])).empty()) return err;
    for (int32_t pos = 0; pos < nb_in + nb_out; ++pos)
        if (!p.build->supportsFormatCombination(pos, io.data(), nb_in, nb_out))
            return "supportsFormatCombination rejects position " + std::to_string(pos) + " (" +
                   (pos < nb_in ? n.inputs[pos].name : n.outputs[pos - nb_in].name) + ") with the graph's types";
    {
        std::vector<DynamicPluginTensorDesc> hwc = io;
        hwc[0].desc.format = TensorFormat::kHWC8;
        if (p.build->supportsFormatCombination(0, hwc.data(), nb_in, nb_out))
            return "supportsFormatCombination accepts a vectorized (HWC8) x";
    }

    // Build-time configuration (dynamic dimensions as -1 with their ranges), workspace.
    if (p.build->configurePlugin(io.data(), nb_in, io.data() + nb_in, nb_out) != 0)
        return "configurePlugin failed: " + logger.take();
    const size_t workspace = p.build->getWorkspaceSize(io.data(), nb_in, io.data() + nb_in, nb_out);

    // Runtime: concrete (opt) shapes.
    std::vector<PluginTensorDesc> concrete(io.size());
    for (size_t i = 0; i < io.size(); ++i) {
        concrete[i] = io[i].desc;
        concrete[i].dims = io[i].opt;
    }
    if (p.runtime->onShapeChange(concrete.data(), nb_in, concrete.data() + nb_in, nb_out) != 0)
        return "onShapeChange failed: " + logger.take();

    // Serialization round trip: the fields an engine stores recreate an equal plugin, and
    // they are the advertised ones with the advertised types.
    const PluginFieldCollection* saved = p.runtime->getFieldsToSerialize();
    const PluginFieldCollection* names = creator->getFieldNames();
    if (!saved || !names || saved->nbFields != names->nbFields) return "getFieldsToSerialize differs from getFieldNames";
    for (int32_t i = 0; i < saved->nbFields; ++i)
        if (std::strcmp(saved->fields[i].name, names->fields[i].name) != 0 ||
            saved->fields[i].type != names->fields[i].type)
            return std::string("serialized field ") + saved->fields[i].name + " differs from the advertised one";
    Plugin q = capabilities(creator->createPlugin(n.name.c_str(), saved, TensorRTPhase::kRUNTIME));
    if (!q.owner || !q.runtime) return "createPlugin(kRUNTIME) from the serialized fields failed: " + logger.take();
    if (!same_fields(saved, q.runtime->getFieldsToSerialize())) return "deserialized plugin serializes differently";
    if (q.runtime->onShapeChange(concrete.data(), nb_in, concrete.data() + nb_in, nb_out) != 0)
        return "deserialized plugin: onShapeChange failed: " + logger.take();
    std::unique_ptr<IPluginV3> clone(p.owner->clone());
    if (!clone) return "clone failed";

    *info = "outputs=" + n.outputs[0].dtype + dims_text(out_exprs[0]) + " workspace=" + std::to_string(workspace);
    if (enqueue && !n.data.empty())
        return enqueue_node(n, lib, q.runtime, concrete, nb_in, workspace, logger, info);
    return "";
}

// ------------------------------------------------------------------ registration
// Stands in for libnvinfer's registry in the `register` mode: records registerCreator.
struct Registration {
    std::string name, version, ns;
};
std::vector<Registration> g_registrations;

class RecordingRegistry final : public IPluginRegistry {
public:
    ~RecordingRegistry() noexcept override = default;
#if NV_TENSORRT_MAJOR < 11
    // TensorRT 10's deprecated IPluginCreator overloads: pure virtual there, so defined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const,
                                     AsciiChar const* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#pragma GCC diagnostic pop
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
        IPluginCreatorV3One* v3 = as_v3(&creator);
        g_registrations.push_back({v3 ? v3->getPluginName() : "?", v3 ? v3->getPluginVersion() : "?", ns ? ns : ""});
        creators_.push_back(&creator);
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
        *n = static_cast<int32_t>(creators_.size());
        return creators_.data();
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
                                        AsciiChar const* const ns) noexcept override {
        for (const auto& r : g_registrations)
            if (r.name == name && r.version == version && r.ns == (ns ? ns : ""))
                return creators_[static_cast<size_t>(&r - g_registrations.data())];
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
        return getAllCreators(n);
    }

private:
    std::vector<IPluginCreatorInterface*> creators_;
};

}  // namespace

// Found by libtinyvim_trt_plugin_autoreg.so through dlsym(RTLD_DEFAULT), as libnvinfer's would be.
extern "C" IPluginRegistry* getPluginRegistry() noexcept {
    static RecordingRegistry registry;
    return &registry;
}

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (argc < 3 || (mode != "describe" && mode != "nodes" && mode != "register" && mode != "enqueue") ||
        (mode != "describe" && argc < 4)) {
        std::fprintf(stderr, "usage: %s describe LIB | nodes LIB SPEC | enqueue LIB SPEC | register LIB AUTOREG\n",
                     argv[0]);
        return 2;
    }
    std::printf("tensorrt_headers %d.%d.%d\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR, NV_TENSORRT_PATCH);
    if (mode == "register") {
        // The plugin library must register nothing by being loaded; the autoreg one, each creator once.
        if (!dlopen(argv[2], RTLD_NOW | RTLD_LOCAL)) {
            std::printf("error dlopen %s\n", dlerror());
            return 1;
        }
        std::printf("registrations_after_plugin %zu\n", g_registrations.size());
        if (!dlopen(argv[3], RTLD_NOW | RTLD_LOCAL)) {
            std::printf("error dlopen %s\n", dlerror());
            return 1;
        }
        std::printf("registrations_after_autoreg %zu\n", g_registrations.size());
        for (const auto& r : g_registrations)
            std::printf("registered %s %s %s\n", r.name.c_str(), r.version.c_str(), r.ns.c_str());
        return 0;
    }
    CaptureLogger logger;
    LoggerFinder finder(&logger);
    Library lib;
    if (!load_library(argv[2], &finder, &lib)) return 1;
    if (mode == "describe") return describe(lib);
    const std::vector<NodeSpec> nodes = read_spec(argv[3]);
    if (nodes.empty()) {
        std::printf("error no nodes in %s\n", argv[3]);
        return 1;
    }
    for (const NodeSpec& n : nodes) {
        std::string info;
        const std::string err = run_node(n, lib, logger, &info, mode == "enqueue");
        if (err.empty())
            std::printf("node %s ok %s\n", n.name.c_str(), info.c_str());
        else
            std::printf("node %s error %s\n", n.name.c_str(), err.c_str());
    }
    return 0;
}
