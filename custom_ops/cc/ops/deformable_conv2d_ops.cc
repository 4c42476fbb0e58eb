// Interface of the DeformableConv2D custom op: REGISTER_OP and shape functions.
//
// E2eTf>DeformableConv2D computes a deformable (DCNv1, or DCNv2 with `use_mask`)
// convolution, NHWC, with the Keras Conv2D kernel layout and no bias;
// E2eTf>DeformableConv2DGrad returns the gradients of all four inputs. Shape
// functions accept unknown dimensions and reject inconsistent known ones.

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace e2e_tf {
namespace {

template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

struct ConvAttrs {
  std::vector<int> strides;
  std::vector<int> pads;
  std::vector<int> dilations;
  int groups = 1;
  int offset_groups = 1;
  bool use_mask = false;
};

absl::Status ReadAttrs(InferenceContext* c, ConvAttrs* attrs) {
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &attrs->strides));
  TF_RETURN_IF_ERROR(c->GetAttr("pads", &attrs->pads));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &attrs->dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("groups", &attrs->groups));
  TF_RETURN_IF_ERROR(c->GetAttr("offset_groups", &attrs->offset_groups));
  TF_RETURN_IF_ERROR(c->GetAttr("use_mask", &attrs->use_mask));
  if (attrs->strides.size() != 2 || attrs->strides[0] < 1 || attrs->strides[1] < 1) {
    return InvalidArgument("strides must be 2 positive ints (h, w)");
  }
  if (attrs->dilations.size() != 2 || attrs->dilations[0] < 1 || attrs->dilations[1] < 1) {
    return InvalidArgument("dilations must be 2 positive ints (h, w)");
  }
  if (attrs->pads.size() != 4 || attrs->pads[0] < 0 || attrs->pads[1] < 0 ||
      attrs->pads[2] < 0 || attrs->pads[3] < 0) {
    return InvalidArgument("pads must be 4 non-negative ints (top, bottom, left, right)");
  }
  if (attrs->groups < 1 || attrs->offset_groups < 1) {
    return InvalidArgument("groups and offset_groups must be >= 1, got ", attrs->groups,
                           " and ", attrs->offset_groups);
  }
  return absl::OkStatus();
}

// Output length along one axis, or unknown; an error when the padded input is
// smaller than the dilated kernel.
absl::Status OutputDim(InferenceContext* c, DimensionHandle in, DimensionHandle k, int pad_a,
                       int pad_b, int stride, int dilation, const char* axis,
                       DimensionHandle* out) {
  if (!c->ValueKnown(in) || !c->ValueKnown(k)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  const int64_t span = dilation * (c->Value(k) - 1) + 1;
  const int64_t padded = c->Value(in) + pad_a + pad_b;
  if (padded < span) {
    return InvalidArgument("input ", axis, " ", c->Value(in), " plus padding ", pad_a + pad_b,
                           " is smaller than the dilated kernel extent ", span);
  }
  *out = c->MakeDim((padded - span) / stride + 1);
  return absl::OkStatus();
}

// Checks that the known dims of `shape` match `expected` (unknown dims match anything).
absl::Status MergeNamed(InferenceContext* c, ShapeHandle shape, ShapeHandle expected,
                        const char* name, ShapeHandle* out) {
  if (!c->Merge(shape, expected, out).ok()) {
    return InvalidArgument(name, " has shape ", c->DebugString(shape), " but the op expects ",
                           c->DebugString(expected),
                           " (batch, output height, output width, channels)");
  }
  return absl::OkStatus();
}

// Validates the four inputs; returns the output shape (N, Ho, Wo, F) and the
// checked mask shape.
absl::Status InferShapes(InferenceContext* c, ShapeHandle* output, ShapeHandle* mask_out) {
  ConvAttrs attrs;
  TF_RETURN_IF_ERROR(ReadAttrs(c, &attrs));
  ShapeHandle input, offsets, kernel, mask;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &offsets));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &kernel));
  const std::string input_str = c->DebugString(input);
  const std::string kernel_str = c->DebugString(kernel);

  DimensionHandle batch = c->Dim(input, 0);
  DimensionHandle channels = c->Dim(input, 3);
  DimensionHandle kernel_h = c->Dim(kernel, 0);
  DimensionHandle kernel_w = c->Dim(kernel, 1);
  DimensionHandle filters = c->Dim(kernel, 3);

  DimensionHandle unused;
  DimensionHandle kernel_channels;
  if (!c->Multiply(c->Dim(kernel, 2), attrs.groups, &kernel_channels).ok() ||
      !c->Merge(channels, kernel_channels, &unused).ok()) {
    return InvalidArgument("input ", input_str, " has ", c->DebugString(channels),
                           " channels but kernel ", kernel_str, " expects C / groups = ",
                           c->DebugString(c->Dim(kernel, 2)), " with groups=", attrs.groups);
  }
  if (c->ValueKnown(channels) && c->Value(channels) % attrs.offset_groups != 0) {
    return InvalidArgument("input ", input_str, ": channels are not divisible by offset_groups=",
                           attrs.offset_groups);
  }
  if (c->ValueKnown(filters) && c->Value(filters) % attrs.groups != 0) {
    return InvalidArgument("kernel ", kernel_str, ": filters are not divisible by groups=",
                           attrs.groups);
  }

  DimensionHandle out_h, out_w;
  TF_RETURN_IF_ERROR(OutputDim(c, c->Dim(input, 1), kernel_h, attrs.pads[0], attrs.pads[1],
                               attrs.strides[0], attrs.dilations[0], "height", &out_h));
  TF_RETURN_IF_ERROR(OutputDim(c, c->Dim(input, 2), kernel_w, attrs.pads[2], attrs.pads[3],
                               attrs.strides[1], attrs.dilations[1], "width", &out_w));

  DimensionHandle taps = c->UnknownDim();
  if (c->ValueKnown(kernel_h) && c->ValueKnown(kernel_w)) {
    taps = c->MakeDim(c->Value(kernel_h) * c->Value(kernel_w));
  }
  DimensionHandle offset_channels, mask_channels;
  TF_RETURN_IF_ERROR(c->Multiply(taps, 2 * attrs.offset_groups, &offset_channels));
  TF_RETURN_IF_ERROR(c->Multiply(taps, attrs.offset_groups, &mask_channels));

  ShapeHandle merged;
  TF_RETURN_IF_ERROR(MergeNamed(c, offsets, c->MakeShape({batch, out_h, out_w, offset_channels}),
                                "offsets", &merged));
  if (attrs.use_mask) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &mask));
    TF_RETURN_IF_ERROR(
        MergeNamed(c, mask, c->MakeShape({batch, out_h, out_w, mask_channels}), "mask", &merged));
    *mask_out = merged;
  } else {
    *mask_out = c->MakeShape({0});
  }
  // Batch and output size may be known from the offsets alone.
  TF_RETURN_IF_ERROR(c->Merge(batch, c->Dim(offsets, 0), &batch));
  TF_RETURN_IF_ERROR(c->Merge(out_h, c->Dim(offsets, 1), &out_h));
  TF_RETURN_IF_ERROR(c->Merge(out_w, c->Dim(offsets, 2), &out_w));
  *output = c->MakeShape({batch, out_h, out_w, filters});
  return absl::OkStatus();
}

}  // namespace

// The attributes of both ops (ReadAttrs checks their values): one list, so that the
// gradient op always accepts the forward op's attributes.
#define E2E_TF_DEFORMABLE_CONV2D_ATTRS                \
  Attr("T: {half, bfloat16, float, double}")          \
      .Attr("strides: list(int) = [1, 1]")            \
      .Attr("pads: list(int) = [0, 0, 0, 0]")         \
      .Attr("dilations: list(int) = [1, 1]")          \
      .Attr("groups: int = 1")                        \
      .Attr("offset_groups: int = 1")                 \
      .Attr("use_mask: bool = false")                 \
      .Attr("chunk_rows: int = 0")

REGISTER_OP("E2eTf>DeformableConv2D")
    .Input("input: T")
    .Input("offsets: T")
    .Input("kernel: T")
    .Input("mask: T")
    .Output("output: T")
    .E2E_TF_DEFORMABLE_CONV2D_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle output, mask;
      TF_RETURN_IF_ERROR(InferShapes(c, &output, &mask));
      c->set_output(0, output);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Deformable 2-D convolution (NHWC, Keras kernel layout, no bias).

input: (N, H, W, C).
offsets: (N, Ho, Wo, 2 * offset_groups * kh * kw), interleaved (dy, dx) per tap.
kernel: (kh, kw, C / groups, F).
mask: (N, Ho, Wo, offset_groups * kh * kw) when use_mask, else ignored (pass an
  empty tensor).
output: (N, Ho, Wo, F).
pads: explicit (top, bottom, left, right) zero padding.
chunk_rows: output pixels processed per column-buffer chunk; 0 bounds the buffer
  to a fixed memory budget.
)doc");

REGISTER_OP("E2eTf>DeformableConv2DGrad")
    .Input("input: T")
    .Input("offsets: T")
    .Input("kernel: T")
    .Input("mask: T")
    .Input("grad_output: T")
    .Output("grad_input: T")
    .Output("grad_offsets: T")
    .Output("grad_mask: T")
    .Output("grad_kernel: T")
    .E2E_TF_DEFORMABLE_CONV2D_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle output, mask, grad_output;
      TF_RETURN_IF_ERROR(InferShapes(c, &output, &mask));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 4, &grad_output));
      if (!c->Merge(grad_output, output, &grad_output).ok()) {
        return InvalidArgument("grad_output has shape ", c->DebugString(c->input(4)),
                               " but the forward output has shape ", c->DebugString(output));
      }
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, mask);
      c->set_output(3, c->input(2));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradients of E2eTf>DeformableConv2D w.r.t. input, offsets, mask and kernel.
grad_mask is empty when use_mask is false. Offset gradients are right-hand
derivatives at integer sampling coordinates.
)doc");

#undef E2E_TF_DEFORMABLE_CONV2D_ATTRS

}  // namespace e2e_tf
