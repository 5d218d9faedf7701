// Unit tests of the TensorRT plugin's host logic (plugin_logic.h): field parsing and
// validation, the serialization round trip, shape/type/format rules and launch arguments.
// Built by CMake (target tinyvim_plugin_logic_test) and run by tests/test_plugins_host_logic.py.
// Exit status 0 iff every check passed; each failure prints file:line and the expression.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "plugin_logic.h"

using namespace tinyvim::plugin;

static int g_checks = 0;
static int g_failures = 0;

#define CHECK(cond)                                                          \
    do {                                                                     \
        ++g_checks;                                                          \
        if (!(cond)) {                                                       \
            ++g_failures;                                                    \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                    \
    } while (0)

static bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

static Shape shape(std::initializer_list<int64_t> dims) {
    Shape s;
    for (int64_t v : dims) s.d[s.nb_dims++] = v;
    return s;
}

static std::vector<Shape> inputs(int64_t B, int64_t D, int64_t H, int64_t W, int64_t N) {
    const int64_t D4 = D < 0 ? -1 : 4 * D;
    return {shape({B, D, H, W}), shape({B, D4, H, W}), shape({B, 4, N, H, W}),
            shape({B, 4, N, H, W}), shape({D4, N}), shape({D4}), shape({D4})};
}

static void test_parse_fields() {
    std::string err;
    ScanParams p;
    int32_t n32 = 8;
    Field f32{"d_state", &n32, FieldType::kInt32, 1};
    CHECK(parse_fields(&f32, 1, &p, &err) && p.d_state == 8);

    int64_t n64 = 16;
    Field f64{"d_state", &n64, FieldType::kInt64, 1};
    CHECK(parse_fields(&f64, 1, &p, &err) && p.d_state == 16);

    const char ver[] = "1";
    Field with_meta[] = {Field{"plugin_version", ver, FieldType::kChar, 1}, f32};
    CHECK(parse_fields(with_meta, 2, &p, &err) && p.d_state == 8);

    ScanParams untouched;
    untouched.d_state = 5;
    p = untouched;
    CHECK(!parse_fields(nullptr, 0, &p, &err) && contains(err, "missing"));
    CHECK(p == untouched);   // a failed parse leaves the output alone

    for (int64_t bad : {0LL, -3LL, 17LL, 1000LL}) {
        int64_t v = bad;
        Field f{"d_state", &v, FieldType::kInt64, 1};
        err.clear();
        CHECK(!parse_fields(&f, 1, &p, &err) && contains(err, "not supported"));
    }
    float fl = 8.f;
    Field ff{"d_state", &fl, FieldType::kFloat32, 1};
    CHECK(!parse_fields(&ff, 1, &p, &err) && contains(err, "integer"));
    int32_t two[2] = {8, 8};
    Field fl2{"d_state", two, FieldType::kInt32, 2};
    CHECK(!parse_fields(&fl2, 1, &p, &err) && contains(err, "single"));
    Field typo{"dstate", &n32, FieldType::kInt32, 1};
    CHECK(!parse_fields(&typo, 1, &p, &err) && contains(err, "unknown attribute 'dstate'"));
    CHECK(contains(err, "CrossSelectiveScan"));
}

static void test_serialization_round_trip() {
    for (int32_t n = 1; n <= 16; ++n) {
        ScanParams p;
        p.d_state = n;
        const std::vector<Field> fields = fields_to_serialize(p);
        ScanParams q;
        std::string err;
        CHECK(parse_fields(fields.data(), static_cast<int32_t>(fields.size()), &q, &err));
        CHECK(q == p);
    }
    const std::vector<Field> adv = advertised_fields();
    CHECK(adv.size() == 1 && std::string(adv[0].name) == "d_state" && adv[0].type == FieldType::kInt32);
}

static void test_shapes() {
    ScanParams p;
    p.d_state = 8;
    std::string err;
    auto ok = inputs(2, 12, 7, 5, 8);
    CHECK(check_input_shapes(ok.data(), 7, p, &err));
    auto dyn = inputs(-1, 12, 7, 7, 8);      // dynamic batch at build time
    CHECK(check_input_shapes(dyn.data(), 7, p, &err));
    CHECK(!check_input_shapes(ok.data(), 6, p, &err) && contains(err, "7 inputs"));

    auto bad_delta = ok;
    bad_delta[1].d[1] = 12;                  // D instead of 4D
    CHECK(!check_input_shapes(bad_delta.data(), 7, p, &err) && contains(err, "delta must be"));
    auto bad_state = inputs(2, 12, 7, 5, 16);  // tensors built for N=16, plugin says 8
    CHECK(!check_input_shapes(bad_state.data(), 7, p, &err) &&
          contains(err, "d_state = 8 (the node's attribute) but Bs has N = 16"));
    auto bad_a = ok;
    bad_a[4].d[1] = 4;                       // A built for N=4
    CHECK(!check_input_shapes(bad_a.data(), 7, p, &err) && contains(err, "but A has N = 4"));
    auto bad_hw = ok;
    bad_hw[3].d[4] = 7;                      // Cs with w = h: a transposed map
    CHECK(!check_input_shapes(bad_hw.data(), 7, p, &err) && contains(err, "Cs must be"));
    auto bad_rank = ok;
    bad_rank[5] = shape({48, 1});
    CHECK(!check_input_shapes(bad_rank.data(), 7, p, &err) && contains(err, "Ds must have rank 1"));
    auto bad_bias = ok;
    bad_bias[6].d[0] = 47;
    CHECK(!check_input_shapes(bad_bias.data(), 7, p, &err) && contains(err, "delta_bias must be"));

    const Shape out = output_shape(ok.data(), 7);
    CHECK(out.nb_dims == 4 && out.d[0] == 2 && out.d[1] == 12 && out.d[2] == 7 && out.d[3] == 5);
}

static void test_types_and_formats() {
    std::string err;
    IoType out;
    const IoType half_in[7] = {IoType::kHalf, IoType::kHalf, IoType::kHalf, IoType::kHalf,
                               IoType::kFloat, IoType::kFloat, IoType::kFloat};
    CHECK(output_type(half_in, 7, &out, &err) && out == IoType::kHalf);
    const IoType bad_in[7] = {IoType::kUnsupported};
    CHECK(!output_type(bad_in, 7, &out, &err));

    const IoType all[] = {IoType::kFloat, IoType::kHalf, IoType::kBF16, IoType::kUnsupported};
    for (IoType xt : all) {
        for (int pos = 0; pos < 8; ++pos) {
            for (IoType t : all) {
                for (bool linear : {true, false}) {
                    TensorDesc io[8];
                    for (auto& d : io) d = TensorDesc{IoType::kFloat, true};
                    io[0] = TensorDesc{xt, true};
                    io[pos] = TensorDesc{t, linear};
                    const bool got = supports_combination(pos, io, 7, 1);
                    bool want;
                    if (!linear) want = false;
                    else if (pos == 0) want = t != IoType::kUnsupported;
                    else if (pos >= 4 && pos <= 6) want = t == IoType::kFloat;
                    else want = t == io[0].type;
                    CHECK(got == want);
                }
            }
        }
    }
    TensorDesc io[8];
    for (auto& d : io) d = TensorDesc{IoType::kFloat, true};
    CHECK(!supports_combination(8, io, 7, 1));
    CHECK(!supports_combination(0, io, 6, 1));
}

static void test_launch_args() {
    ScanParams p;
    p.d_state = 8;
    std::string err;
    LaunchArgs a;
    auto ok = inputs(3, 13, 7, 5, 8);
    CHECK(make_launch_args(ok.data(), 7, IoType::kBF16, p, &a, &err));
    CHECK(a.B == 3 && a.D == 13 && a.H == 7 && a.W == 5 && a.N == 8 && a.dtype == 2);
    auto dyn = inputs(-1, 13, 7, 5, 8);
    CHECK(!make_launch_args(dyn.data(), 7, IoType::kFloat, p, &a, &err) && contains(err, "concrete"));
    CHECK(!make_launch_args(ok.data(), 7, IoType::kUnsupported, p, &a, &err));
}

int main() {
    test_parse_fields();
    test_serialization_round_trip();
    test_shapes();
    test_types_and_formats();
    test_launch_args();
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
