// Two autograd functions that tch cannot express (it has no custom
// autograd), built by build.rs against the libtorch headers tch links:
//
// * attention that keeps no [B, H, Lq, Lk] tensor for the backward pass:
//   the forward runs over chunks of queries without autograd and saves only
//   q, k, v and the compact mask inputs; the backward recomputes each chunk
//   with autograd on and takes its gradients. Each chunk runs exactly the
//   ops of the eager path in src/model/network/{gemma2,siglip}.rs (scale,
//   soft-cap, additive prefix-LM mask, f32 softmax cast back, ·v), so a row
//   sees the same arithmetic as there.
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

// The additive mask of queries q0..q0+c (sequence indices q_start + q0 …)
// over every key, [B, 1, c, Lk]: gemma2.rs's prefix_lm_mask, chunk by chunk.
// Undefined when the attention has no mask (SigLIP).
at::Tensor chunk_mask(const at::Tensor& key_mask, const at::Tensor& prefix,
                      int64_t q_start, int64_t window, double masked,
                      int64_t q0, int64_t c, int64_t k_len,
                      at::ScalarType kind) {
  if (!key_mask.defined()) {
    return at::Tensor();
  }
  auto device = key_mask.device();
  auto longs = at::TensorOptions().dtype(at::kLong).device(device);
  auto q = at::arange(q_start + q0, q_start + q0 + c, longs).unsqueeze(1);
  auto k = at::arange(k_len, longs).unsqueeze(0);
  auto allowed = k.le(q);
  if (window > 0) {
    allowed = allowed.logical_and(k.gt(q.sub(window)));
  }
  allowed = allowed.unsqueeze(0);
  if (prefix.defined()) {
    auto q_prefix = prefix.narrow(1, q_start + q0, c).unsqueeze(2);
    auto k_prefix = prefix.unsqueeze(1);
    allowed = allowed.logical_or(q_prefix.logical_and(k_prefix));
  }
  allowed = allowed.logical_and(key_mask.ne(0).unsqueeze(1));
  auto batch = key_mask.size(0);
  return at::zeros({batch, c, k_len}, at::TensorOptions().dtype(kind).device(device))
      .masked_fill(allowed.logical_not(), masked)
      .unsqueeze(1);
}

// One chunk of the eager computation.
at::Tensor attention_core(const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& mask,
                          double scaling, double softcap) {
  auto scores = at::matmul(q, k.transpose(-1, -2)).mul(scaling);
  if (softcap > 0) {
    scores = scores.div(softcap).tanh().mul(softcap);
  }
  if (mask.defined()) {
    scores = scores.add(mask);
  }
  auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);
}

// gemma2.rs's repeat_kv: kv head h serves query heads h·n … h·n + n − 1.
at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) {
    return x;
  }
  auto b = x.size(0), kv = x.size(1), l = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, kv, n_rep, l, d}).reshape({b, kv * n_rep, l, d});
}

struct ChunkedAttention : public torch::autograd::Function<ChunkedAttention> {
  static variable_list forward(AutogradContext* ctx, at::Tensor q, at::Tensor k,
                               at::Tensor v, std::optional<at::Tensor> key_mask_in,
                               std::optional<at::Tensor> prefix_in, int64_t q_start,
                               int64_t window, double scaling, double softcap,
                               double masked, int64_t chunk) {
    auto key_mask = key_mask_in.value_or(at::Tensor());
    auto prefix = prefix_in.value_or(at::Tensor());
    auto n_rep = q.size(1) / k.size(1);
    auto k_rep = repeat_kv(k, n_rep);
    auto v_rep = repeat_kv(v, n_rep);
    auto q_len = q.size(2), k_len = k.size(2);
    std::vector<at::Tensor> outs;
    for (int64_t q0 = 0; q0 < q_len; q0 += chunk) {
      auto c = std::min(chunk, q_len - q0);
      auto mask = chunk_mask(key_mask, prefix, q_start, window, masked, q0, c,
                             k_len, q.scalar_type());
      outs.push_back(attention_core(q.narrow(2, q0, c), k_rep, v_rep, mask,
                                    scaling, softcap));
    }
    ctx->save_for_backward({q, k, v});
    // Inputs without gradients: kept as plain values (possibly undefined).
    ctx->saved_data["key_mask"] = key_mask;
    ctx->saved_data["prefix"] = prefix;
    ctx->saved_data["q_start"] = q_start;
    ctx->saved_data["window"] = window;
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["masked"] = masked;
    ctx->saved_data["chunk"] = chunk;
    return {outs.size() == 1 ? outs[0] : at::cat(outs, 2)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto q = saved[0], k = saved[1], v = saved[2];
    auto key_mask = ctx->saved_data["key_mask"].toTensor();
    auto prefix = ctx->saved_data["prefix"].toTensor();
    auto q_start = ctx->saved_data["q_start"].toInt();
    auto window = ctx->saved_data["window"].toInt();
    auto scaling = ctx->saved_data["scaling"].toDouble();
    auto softcap = ctx->saved_data["softcap"].toDouble();
    auto masked = ctx->saved_data["masked"].toDouble();
    auto chunk = ctx->saved_data["chunk"].toInt();
    auto grad_out = grads[0];
    auto n_rep = q.size(1) / k.size(1);
    auto q_len = q.size(2), k_len = k.size(2);
    // The repeated keys and values are leaves of each chunk's graph; their
    // gradients add up over the chunks (in f32) and fold back onto the kv
    // heads at the end, as the expand in repeat_kv would.
    auto k_rep = repeat_kv(k, n_rep).detach().requires_grad_(true);
    auto v_rep = repeat_kv(v, n_rep).detach().requires_grad_(true);
    auto f32 = k_rep.options().dtype(at::kFloat);
    auto dk_rep = at::zeros(k_rep.sizes(), f32);
    auto dv_rep = at::zeros(v_rep.sizes(), f32);
    std::vector<at::Tensor> dqs;
    for (int64_t q0 = 0; q0 < q_len; q0 += chunk) {
      auto c = std::min(chunk, q_len - q0);
      at::AutoGradMode grad_on(true);
      auto q_chunk = q.narrow(2, q0, c).detach().requires_grad_(true);
      auto mask = chunk_mask(key_mask, prefix, q_start, window, masked, q0, c,
                             k_len, q.scalar_type());
      auto out = attention_core(q_chunk, k_rep, v_rep, mask, scaling, softcap);
      auto g = torch::autograd::grad({out}, {q_chunk, k_rep, v_rep},
                                     {grad_out.narrow(2, q0, c)});
      dqs.push_back(g[0]);
      dk_rep.add_(g[1]);
      dv_rep.add_(g[2]);
    }
    auto fold = [&](const at::Tensor& g) {
      if (n_rep == 1) {
        return g.to(k.scalar_type());
      }
      auto sizes = k.sizes();
      return g.view({sizes[0], sizes[1], n_rep, sizes[2], sizes[3]})
          .sum(2)
          .to(k.scalar_type());
    };
    auto dq = dqs.size() == 1 ? dqs[0] : at::cat(dqs, 2);
    return {dq,           fold(dk_rep), fold(dv_rep), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
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
                             data["nested_absmax"].toTensor(),
                             ctx->saved_data["offset"].toDouble(),
                             ctx->saved_data["nested_block"].toInt(),
                             ctx->saved_data["rows"].toInt(),
                             ctx->saved_data["cols"].toInt(),
                             ctx->saved_data["block"].toInt(), kind);
    auto grad = grads[0];
    auto dx = at::matmul(grad, weight);
    at::Tensor dbias;
    if (ctx->saved_data["bias_grad"].toBool()) {
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

std::vector<at::Tensor> tensors(at::Tensor** list, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(*list[i]);
  }
  return out;
}

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
  try {
    adamw_step(values, masters, exp_avg, exp_avg_sq, decay, n, lr, beta1, beta2,
               eps, weight_decay, bias1, bias2);
    return 0;
  } catch (const std::exception& e) {
    kernel_error = e.what();
    return 1;
  }
}

int palisweep_clip_grad_norm(at::Tensor** values, int64_t n, double max_norm,
                             double* norm) {
  try {
    *norm = clip_grad_norm(values, n, max_norm);
    return 0;
  } catch (const std::exception& e) {
    kernel_error = e.what();
    return 1;
  }
}

// Drops every gradient (PyTorch's `set_to_none`): no kernel at all; the next
// backward writes fresh gradients instead of adding to zeros.
int palisweep_zero_grad(at::Tensor** values, int64_t n) {
  try {
    for (int64_t i = 0; i < n; ++i) {
      values[i]->mutable_grad().reset();
    }
    return 0;
  } catch (const std::exception& e) {
    kernel_error = e.what();
    return 1;
  }
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

// q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D]; key_mask [B, Lk] (nullable:
// no mask at all), prefix [B, Lk] bool (nullable); window <= 0: none;
// softcap <= 0: none. *out [B, Hq, Lq, D].
int palisweep_chunked_attention(at::Tensor* q, at::Tensor* k, at::Tensor* v,
                                at::Tensor* key_mask, at::Tensor* prefix,
                                int64_t q_start, int64_t window, double scaling,
                                double softcap, double masked, int64_t chunk,
                                at::Tensor** out) {
  try {
    auto result = ChunkedAttention::apply(*q, *k, *v, optional(key_mask),
                                          optional(prefix), q_start, window,
                                          scaling, softcap, masked,
                                          std::max<int64_t>(chunk, 1));
    *out = new at::Tensor(result[0]);
    return 0;
  } catch (const std::exception& e) {
    kernel_error = e.what();
    return 1;
  }
}

// x [..., cols] → [..., rows] through the NF4 weight [rows, cols]; absmax
// is f32 [blocks], or the u8 codes into dynamic_map with nested_absmax
// (double quantisation; dynamic_map nullable otherwise). bias nullable.
int palisweep_nf4_linear(at::Tensor* x, at::Tensor* packed, at::Tensor* byte_lut,
                         at::Tensor* absmax, at::Tensor* dynamic_map,
                         at::Tensor* nested_absmax, at::Tensor* bias,
                         double offset, int64_t nested_block, int64_t rows,
                         int64_t cols, int64_t block, at::Tensor** out) {
  try {
    auto result = Nf4Linear::apply(*x, *packed, *byte_lut, *absmax,
                                   optional(dynamic_map), optional(nested_absmax),
                                   optional(bias), offset, nested_block, rows,
                                   cols, block);
    *out = new at::Tensor(result[0]);
    return 0;
  } catch (const std::exception& e) {
    kernel_error = e.what();
    return 1;
  }
}

}
