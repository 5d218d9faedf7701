// OpenVINO extension for the tinyvim::CrossSelectiveScan node: the op (computed by the fast CPU
// scan, cross_scan_cpu_fast.cpp, compiled into this library) and its ONNX frontend conversion.
// Load it with ov::Core::add_extension(<path>) (Python: core.add_extension(str(path))) before
// reading a plugin-flavour ONNX or an IR exported from one.
//
// Built against the headers and OpenVINOConfig.cmake that the openvino wheel ships (see
// CMakeLists.txt, tinyvim/plugins/ov_extension.py); nothing else.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/op.hpp>

#include "cross_scan_cpu_fast.h"
#include "scan_step.h"

namespace tinyvim {

class CrossSelectiveScan : public ov::op::Op {
public:
    // type name and "opset" as an IR records them: <layer type="CrossSelectiveScan" version="tinyvim">
    OPENVINO_OP("CrossSelectiveScan", "tinyvim");

    CrossSelectiveScan() = default;
    CrossSelectiveScan(const ov::OutputVector& args, int64_t d_state) : Op(args), m_d_state(d_state) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 7, "CrossSelectiveScan takes 7 inputs "
                              "(x, delta, Bs, Cs, A, Ds, delta_bias), got ", get_input_size());
        NODE_VALIDATION_CHECK(this, m_d_state >= 1 && m_d_state <= scan::kMaxState,
                              "d_state must be in 1..", scan::kMaxState, ", got ", m_d_state);
        const auto& a = get_input_partial_shape(4);
        NODE_VALIDATION_CHECK(this, a.rank().is_dynamic() || a.rank().get_length() == 2, "A must be (4D, N)");
        if (a.rank().is_static() && a[1].is_static())
            NODE_VALIDATION_CHECK(this, a[1].get_length() == m_d_state, "A's second dim (", a[1],
                                  ") must equal d_state (", m_d_state, ")");
        // y has x's type and shape: batch and grid may be dynamic, the kernel reads them at run time.
        set_output_type(0, get_input_element_type(0), get_input_partial_shape(0));
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<CrossSelectiveScan>(args, m_d_state);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("d_state", m_d_state);
        return true;
    }

    bool has_evaluate() const override { return io_code(get_input_element_type(0)) >= 0; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Shape x = inputs[0].get_shape();
        const int code = io_code(inputs[0].get_element_type());
        if (x.size() != 4 || code < 0 || inputs[4].get_shape().size() != 2) return false;
        for (int i = 1; i < 4; ++i)
            if (inputs[i].get_element_type() != inputs[0].get_element_type()) return false;
        // A, Ds and delta_bias are float32 in every export (the contract allows nothing else).
        const float* p[3];
        for (int i = 0; i < 3; ++i) {
            if (inputs[4 + i].get_element_type() != ov::element::f32) return false;
            p[i] = inputs[4 + i].data<const float>();
        }
        outputs[0].set_shape(x);
        const int N = static_cast<int>(inputs[4].get_shape()[1]);
        const int rc = tinyvim_cross_scan_fast(inputs[0].data(), inputs[1].data(), inputs[2].data(),
                                               inputs[3].data(), p[0], p[1], p[2], outputs[0].data(),
                                               static_cast<int>(x[0]), static_cast<int>(x[1]),
                                               static_cast<int>(x[2]), static_cast<int>(x[3]), N, code, 0);
        OPENVINO_ASSERT(rc == 0, "CrossSelectiveScan: ", tinyvim_cross_scan_fast_error_string(rc));
        return true;
    }

private:
    static int io_code(const ov::element::Type& t) {
        if (t == ov::element::f32) return scan::kF32;
        if (t == ov::element::f16) return scan::kF16;
        if (t == ov::element::bf16) return scan::kBF16;
        return -1;
    }

    int64_t m_d_state = 8;
};

}  // namespace tinyvim

namespace {

// ONNX node tinyvim::CrossSelectiveScan(x, delta, Bs, Cs, A, Ds, delta_bias; d_state) -> the op.
ov::OutputVector convert_onnx(const ov::frontend::NodeContext& node) {
    ov::OutputVector args;
    for (size_t i = 0; i < node.get_input_size(); ++i) args.push_back(node.get_input(static_cast<int>(i)));
    const auto d_state = node.get_attribute<int64_t>("d_state");
    return {std::make_shared<tinyvim::CrossSelectiveScan>(args, d_state)->output(0)};
}

}  // namespace

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<tinyvim::CrossSelectiveScan>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("CrossSelectiveScan", "tinyvim", convert_onnx),
}));
