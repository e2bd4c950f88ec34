// Two autograd functions that tch cannot express (it has no custom
// autograd), built by build.rs against the libtorch headers tch links:
//
// * attention that keeps no [B, H, Lq, Lk] tensor for the backward pass:
//   the forward runs over chunks of queries without autograd and saves only
//   q, k and v (and a reference to the pass's mask); the backward
//   recomputes each chunk's probabilities and runs the eager backward on
//   them. Each chunk runs the ops of the eager path in
//   src/model/network/{gemma2,siglip}.rs (scale, soft-cap, prefix-LM mask,
//   f32 softmax cast back, ·v), so a row sees the same arithmetic as there.
// * an NF4 linear layer that keeps only the packed weight between forward
//   and backward and dequantises again for the input gradient, as
//   bitsandbytes' MatMul4Bit does; the dequantisation runs the same ops as
//   Nf4Tensor::dequantize in src/model/adapt/nf4.rs.
// * the optimiser's step, gradient clipping and zero-grad as torch's
//   multi-tensor (_foreach_*) ops: a fixed number of operations per step,
//   whatever the number of trained tensors (on CUDA each is one kernel over
//   all tensors), with the element arithmetic of the per-tensor loop in
//   src/train/optim.rs that they replace.
// * a counter of the ATen operations a thread dispatches (top level only),
//   for tests that hold the optimiser to that fixed number.
//
// Every entry point catches C++ exceptions: it returns 0, or 1 with the
// message kept for palisweep_kernel_error().

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>
#include <string>
#include <vector>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

thread_local std::string kernel_error;

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

// Grouped-query attention without repeating k and v: query head h uses kv
// head h / n_rep (gemma2.rs's repeat_kv), so the queries of one kv head are
// stacked into one matrix, [B, Hkv, n_rep·c, D], and multiply its keys
// once. The key and value gradients then come out summed over the group.
at::Tensor group_queries(const at::Tensor& x, int64_t kv_heads) {
  auto b = x.size(0), h = x.size(1), c = x.size(2), d = x.size(3);
  return x.reshape({b, kv_heads, (h / kv_heads) * c, d});
}

at::Tensor ungroup(const at::Tensor& x, int64_t heads) {
  auto b = x.size(0), kv = x.size(1), rows = x.size(2), d = x.size(3);
  return x.reshape({b, heads, rows * kv / heads, d});
}

// What one chunk's forward keeps for its backward.
struct ChunkScores {
  at::Tensor capped;  // tanh(s/cap), in the compute dtype (undefined: no cap)
  at::Tensor probs;   // the f32 softmax
};

// One chunk of the eager computation up to the probabilities: q [B, Hq, c,
// D] over k [B, Hkv, Lk, D]; `blocked` [B, 1, c, Lk] (bool, may be
// undefined) is where the additive mask holds finfo.min. Adding finfo.min
// to a finite score gives finfo.min, which is what masked_fill writes.
ChunkScores chunk_scores(const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& blocked, double scaling,
                         double softcap, double masked) {
  auto heads = q.size(1);
  auto scores = ungroup(at::matmul(group_queries(q, k.size(1)), k.transpose(-1, -2)), heads)
                    .mul(scaling);
  ChunkScores out;
  if (softcap > 0) {
    out.capped = scores.div(softcap).tanh();
    scores = out.capped.mul(softcap);
  }
  if (blocked.defined()) {
    scores.masked_fill_(blocked, masked);
  }
  out.probs = at::softmax(scores, -1, at::kFloat);
  return out;
}

// probs (cast to the compute dtype) · v, grouped.
at::Tensor chunk_output(const at::Tensor& probs, const at::Tensor& v) {
  auto heads = probs.size(1);
  auto p = group_queries(probs.to(v.scalar_type()), v.size(1));
  return ungroup(at::matmul(p, v), heads);
}

struct ChunkedAttention : public torch::autograd::Function<ChunkedAttention> {
  static variable_list forward(AutogradContext* ctx, at::Tensor q, at::Tensor k,
                               at::Tensor v, std::optional<at::Tensor> blocked_in,
                               double scaling, double softcap, double masked,
                               int64_t chunk) {
    auto blocked = blocked_in.value_or(at::Tensor());
    auto q_len = q.size(2);
    // k and v arrive as [B, Hkv, L, D] views of [B, L, Hkv, D] projections.
    // matmul folds [B, Hkv] into one batch dimension, which such a view
    // allows only when B = 1: otherwise every chunk would copy all of k
    // and v again (a strided copy of the whole sequence per chunk). One
    // contiguous copy each, kept for the backward in place of the views.
    k = k.contiguous();
    v = v.contiguous();
    std::vector<at::Tensor> outs;
    for (int64_t q0 = 0; q0 < q_len; q0 += chunk) {
      auto c = std::min(chunk, q_len - q0);
      auto rows = blocked.defined() ? blocked.narrow(2, q0, c) : at::Tensor();
      auto scores = chunk_scores(q.narrow(2, q0, c), k, rows, scaling, softcap, masked);
      outs.push_back(chunk_output(scores.probs, v));
    }
    ctx->save_for_backward({q, k, v});
    // The mask is no autograd input: kept as a plain value (maybe undefined).
    ctx->saved_data["blocked"] = blocked;
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["masked"] = masked;
    ctx->saved_data["chunk"] = chunk;
    return {outs.size() == 1 ? outs[0] : at::cat(outs, 2)};
  }

  // Each chunk's scores and probabilities again, then the eager path's
  // backward, op for op: ·v, the cast to the compute dtype, the f32 softmax
  // (_softmax_backward_data), the mask (identity), the soft-cap (·cap,
  // tanh_backward, /cap), the scaling, and q·kᵀ.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto q = saved[0], k = saved[1], v = saved[2];
    auto blocked = ctx->saved_data["blocked"].toTensor();
    auto scaling = ctx->saved_data["scaling"].toDouble();
    auto softcap = ctx->saved_data["softcap"].toDouble();
    auto masked = ctx->saved_data["masked"].toDouble();
    auto chunk = ctx->saved_data["chunk"].toInt();
    auto grad_out = grads[0];
    auto kind = q.scalar_type();
    auto heads = q.size(1), kv_heads = k.size(1), q_len = q.size(2);
    // Key and value gradients add up over the chunks in f32.
    auto dk = at::zeros(k.sizes(), k.options().dtype(at::kFloat));
    auto dv = at::zeros(v.sizes(), v.options().dtype(at::kFloat));
    std::vector<at::Tensor> dqs;
    for (int64_t q0 = 0; q0 < q_len; q0 += chunk) {
      auto c = std::min(chunk, q_len - q0);
      auto q_chunk = q.narrow(2, q0, c);
      auto rows = blocked.defined() ? blocked.narrow(2, q0, c) : at::Tensor();
      auto scores = chunk_scores(q_chunk, k, rows, scaling, softcap, masked);
      auto d_out = group_queries(grad_out.narrow(2, q0, c), kv_heads);
      auto probs = scores.probs.to(kind);
      dv.add_(at::matmul(group_queries(probs, kv_heads).transpose(-1, -2), d_out));
      auto d_probs = ungroup(at::matmul(d_out, v.transpose(-1, -2)), heads);
      auto d_scores =
          at::_softmax_backward_data(d_probs.to(at::kFloat), scores.probs, -1, at::kFloat)
              .to(kind);
      if (softcap > 0) {
        d_scores = at::tanh_backward(d_scores.mul(softcap), scores.capped).div(softcap);
      }
      d_scores = group_queries(d_scores.mul(scaling), kv_heads);
      dqs.push_back(ungroup(at::matmul(d_scores, k), heads));
      dk.add_(at::matmul(d_scores.transpose(-1, -2), group_queries(q_chunk, kv_heads)));
    }
    auto dq = dqs.size() == 1 ? dqs[0] : at::cat(dqs, 2);
    return {dq, dk.to(k.scalar_type()), dv.to(v.scalar_type()), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---------------------------------------------------------------------------
// NF4 linear
// ---------------------------------------------------------------------------

// Nf4Tensor::dequantize: code[q]·absmax in f32 (absmax restored from its
// 8-bit codes with double quantisation), then cast to `kind`.
at::Tensor dequantize(const at::Tensor& packed, const at::Tensor& byte_lut,
                      const at::Tensor& absmax, const at::Tensor& dynamic_map,
                      const at::Tensor& nested_absmax, double offset,
                      int64_t nested_block, int64_t rows, int64_t cols,
                      int64_t block, at::ScalarType kind) {
  auto n = rows * cols;
  auto blocks = (n + block - 1) / block;
  at::Tensor scale = absmax;
  if (dynamic_map.defined()) {
    auto values = dynamic_map.index_select(0, absmax.to(at::kInt));
    auto nested = nested_absmax.repeat_interleave(nested_block, 0).narrow(0, 0, blocks);
    scale = values.mul(nested).add(offset);
  }
  scale = scale.unsqueeze(1);
  auto values = byte_lut.index_select(0, packed.to(at::kInt)).view({-1});
  at::Tensor grid;
  if (n % block == 0) {
    grid = values.view({blocks, block});
  } else {
    auto len = values.size(0);
    grid = at::constant_pad_nd(values, {0, blocks * block - len}).view({blocks, block});
  }
  grid.mul_(scale);
  auto out = grid.view({-1}).narrow(0, 0, n).reshape({rows, cols});
  return kind == at::kFloat ? out : out.to(kind);
}

struct Nf4Linear : public torch::autograd::Function<Nf4Linear> {
  static variable_list forward(AutogradContext* ctx, at::Tensor x,
                               at::Tensor packed, at::Tensor byte_lut,
                               at::Tensor absmax,
                               std::optional<at::Tensor> dynamic_map_in,
                               std::optional<at::Tensor> nested_absmax_in,
                               std::optional<at::Tensor> bias_in, double offset,
                               int64_t nested_block, int64_t rows, int64_t cols,
                               int64_t block) {
    auto dynamic_map = dynamic_map_in.value_or(at::Tensor());
    auto nested_absmax = nested_absmax_in.value_or(at::Tensor());
    auto bias = bias_in.value_or(at::Tensor());
    auto weight = dequantize(packed, byte_lut, absmax, dynamic_map, nested_absmax,
                             offset, nested_block, rows, cols, block,
                             x.scalar_type());
    auto out = at::linear(x, weight, bias);
    // The frozen NF4 parts: plain values, not autograd inputs.
    ctx->saved_data["packed"] = packed;
    ctx->saved_data["byte_lut"] = byte_lut;
    ctx->saved_data["absmax"] = absmax;
    ctx->saved_data["dynamic_map"] = dynamic_map;
    ctx->saved_data["nested_absmax"] = nested_absmax;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["nested_block"] = nested_block;
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["cols"] = cols;
    ctx->saved_data["block"] = block;
    ctx->saved_data["kind"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["bias_grad"] = bias.defined() && bias.requires_grad();
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& data = ctx->saved_data;
    auto kind = static_cast<at::ScalarType>(data["kind"].toInt());
    auto weight = dequantize(data["packed"].toTensor(), data["byte_lut"].toTensor(),
                             data["absmax"].toTensor(), data["dynamic_map"].toTensor(),
                             data["nested_absmax"].toTensor(), data["offset"].toDouble(),
                             data["nested_block"].toInt(), data["rows"].toInt(),
                             data["cols"].toInt(), data["block"].toInt(), kind);
    auto grad = grads[0];
    auto dx = at::matmul(grad, weight);
    at::Tensor dbias;
    if (data["bias_grad"].toBool()) {
      dbias = grad.reshape({-1, grad.size(-1)}).sum(0);
    }
    return {dx,           at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), dbias,        at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---------------------------------------------------------------------------
// Optimiser
// ---------------------------------------------------------------------------

// AdamW with decoupled weight decay, on the tensors whose gradient is
// defined: the ops of AdamW::step's former per-tensor loop, each over every
// tensor at once.
void adamw_step(at::Tensor** values, at::Tensor** masters, at::Tensor** exp_avg,
                at::Tensor** exp_avg_sq, const uint8_t* decay, int64_t n,
                double lr, double beta1, double beta2, double eps,
                double weight_decay, double bias1, double bias2) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> weights, grads, m, v, decayed, copy_to, copy_from;
  for (int64_t i = 0; i < n; ++i) {
    auto grad = values[i]->grad();
    if (!grad.defined()) {
      continue;
    }
    // bf16 gradients (full fine-tuning on CUDA) update an f32 master.
    grads.push_back(grad.scalar_type() == at::kFloat ? grad : grad.to(at::kFloat));
    auto weight = masters[i] != nullptr ? *masters[i] : *values[i];
    weights.push_back(weight);
    m.push_back(*exp_avg[i]);
    v.push_back(*exp_avg_sq[i]);
    if (decay[i] != 0 && weight_decay > 0) {
      decayed.push_back(weight);
    }
    if (masters[i] != nullptr) {
      copy_to.push_back(*values[i]);
      copy_from.push_back(*masters[i]);
    }
  }
  if (weights.empty()) {
    return;
  }
  if (!decayed.empty()) {
    at::_foreach_mul_(decayed, 1.0 - lr * weight_decay);
  }
  at::_foreach_mul_(m, beta1);
  at::_foreach_add_(m, at::_foreach_mul(grads, 1.0 - beta1));
  at::_foreach_mul_(v, beta2);
  at::_foreach_add_(v, at::_foreach_mul(at::_foreach_mul(grads, grads), 1.0 - beta2));
  auto denom = at::_foreach_div(v, bias2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, eps);
  auto update = at::_foreach_div(m, denom);
  at::_foreach_mul_(update, lr / bias1);
  at::_foreach_sub_(weights, update);
  if (!copy_to.empty()) {
    at::_foreach_copy_(copy_to, copy_from);
  }
}

// The global L2 norm of the defined gradients (each summed in f64), read
// once; scales them to max_norm when it is positive and exceeded.
double clip_grad_norm(at::Tensor** values, int64_t n, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (int64_t i = 0; i < n; ++i) {
    auto grad = values[i]->grad();
    if (grad.defined()) {
      grads.push_back(grad);
    }
  }
  if (grads.empty()) {
    return 0.0;
  }
  auto norms = at::_foreach_norm(grads, 2, at::kDouble);
  auto norm = at::stack(norms).square().sum().sqrt().item<double>();
  if (max_norm > 0 && norm > max_norm) {
    at::_foreach_mul_(grads, max_norm / (norm + 1e-6));
  }
  return norm;
}

// ---------------------------------------------------------------------------
// Operation counter
// ---------------------------------------------------------------------------

thread_local int64_t op_count = 0;
thread_local int64_t op_depth = 0;
thread_local std::optional<at::CallbackHandle> op_counter;

std::unique_ptr<at::ObserverContext> op_started(const at::RecordFunction&) {
  if (op_depth++ == 0) {
    ++op_count;
  }
  return nullptr;
}

void op_ended(const at::RecordFunction&, at::ObserverContext*) { --op_depth; }

// Runs `f`, turning a C++ exception into the status 1 and its message.
template <class F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    kernel_error = e.what();
    return 1;
  }
}

std::optional<at::Tensor> optional(at::Tensor* t) {
  return t == nullptr ? std::nullopt : std::optional<at::Tensor>(*t);
}

}  // namespace

extern "C" {

// The optimiser (see above): arrays of n tensor pointers; masters[i] null
// for an f32 parameter; decay[i] 0 or 1.
int palisweep_adamw_step(at::Tensor** values, at::Tensor** masters,
                         at::Tensor** exp_avg, at::Tensor** exp_avg_sq,
                         const uint8_t* decay, int64_t n, double lr, double beta1,
                         double beta2, double eps, double weight_decay,
                         double bias1, double bias2) {
  return guarded([&] {
    adamw_step(values, masters, exp_avg, exp_avg_sq, decay, n, lr, beta1, beta2,
               eps, weight_decay, bias1, bias2);
  });
}

int palisweep_clip_grad_norm(at::Tensor** values, int64_t n, double max_norm,
                             double* norm) {
  return guarded([&] { *norm = clip_grad_norm(values, n, max_norm); });
}

// Drops every gradient (PyTorch's `set_to_none`): no kernel at all; the next
// backward writes fresh gradients instead of adding to zeros.
int palisweep_zero_grad(at::Tensor** values, int64_t n) {
  return guarded([&] {
    for (int64_t i = 0; i < n; ++i) {
      values[i]->mutable_grad().reset();
    }
  });
}

// Starts counting the ATen operations this thread dispatches (nested ones,
// which a composite op runs inside, not counted).
void palisweep_count_ops_start(void) {
  op_count = 0;
  op_depth = 0;
  if (!op_counter) {
    op_counter = at::addThreadLocalCallback(
        at::RecordFunctionCallback(op_started, op_ended)
            .scopes({at::RecordScope::FUNCTION}));
  }
}

// Stops counting; the count since the start.
int64_t palisweep_count_ops_stop(void) {
  if (op_counter) {
    at::removeCallback(*op_counter);
    op_counter.reset();
  }
  return op_count;
}

// The message of the last failure on this thread.
const char* palisweep_kernel_error(void) { return kernel_error.c_str(); }

// q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D]; blocked [B, 1, Lq, Lk] bool
// (nullable: no mask), where the scores get `masked`; softcap <= 0: none.
// *out [B, Hq, Lq, D].
int palisweep_chunked_attention(at::Tensor* q, at::Tensor* k, at::Tensor* v,
                                at::Tensor* blocked, double scaling, double softcap,
                                double masked, int64_t chunk, at::Tensor** out) {
  return guarded([&] {
    auto result = ChunkedAttention::apply(*q, *k, *v, optional(blocked), scaling,
                                          softcap, masked, std::max<int64_t>(chunk, 1));
    *out = new at::Tensor(result[0]);
  });
}

// x [..., cols] → [..., rows] through the NF4 weight [rows, cols]; absmax
// is f32 [blocks], or the u8 codes into dynamic_map with nested_absmax
// (double quantisation; dynamic_map nullable otherwise). bias nullable.
int palisweep_nf4_linear(at::Tensor* x, at::Tensor* packed, at::Tensor* byte_lut,
                         at::Tensor* absmax, at::Tensor* dynamic_map,
                         at::Tensor* nested_absmax, at::Tensor* bias,
                         double offset, int64_t nested_block, int64_t rows,
                         int64_t cols, int64_t block, at::Tensor** out) {
  return guarded([&] {
    auto result = Nf4Linear::apply(*x, *packed, *byte_lut, *absmax,
                                   optional(dynamic_map), optional(nested_absmax),
                                   optional(bias), offset, nested_block, rows,
                                   cols, block);
    *out = new at::Tensor(result[0]);
  });
}

}
