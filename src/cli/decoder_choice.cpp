// The decoder of --device: the CPU's BatchDecoder, or the GPU's with its own CUDA context.
#include "cli/decoder_choice.h"

#include <fmt/format.h>

#include "core/error.h"
#include "infer/cpu_decoder.h"
#include "io/checkpoint.h"
#ifdef FTUNE_HAVE_CUDA
#include "gpu/gpu_decoder.h"
#include "ops/cuda/context.h"
#endif

namespace ftune {

void add_decoder_options(CLI::App* cmd, DecoderChoice& c) {
  cmd->add_option("--device", c.device, "cpu (fp32, default) or gpu");
  cmd->add_option("--dtype", c.dtype, "gpu: bf16, fp16, fp32 or auto (default: bf16, or fp16 on GPUs without bf16)");
  cmd->add_flag("--nf4", c.nf4, "gpu: the base's projections in NF4 (as QLoRA trains on them)");
}

void check_decoder_choice(const DecoderChoice& c) {
  if (c.device != "cpu" && c.device != "gpu") fail("--device: expected cpu or gpu, got '{}'", c.device);
  if (c.dtype != "auto" && c.dtype != "bf16" && c.dtype != "fp16" && c.dtype != "fp32")
    fail("--dtype: expected bf16, fp16, fp32 or auto, got '{}'", c.dtype);
  if (!c.gpu() && (c.dtype != "auto" || c.nf4)) fail("--dtype and --nf4 are for --device gpu (the CPU decodes in fp32)");
  if (c.nf4 && c.dtype == "fp32") fail("--nf4: an NF4 base dequantizes into bf16 or fp16, not fp32");
#ifndef FTUNE_HAVE_CUDA
  if (c.gpu()) fail("--device gpu: this ftune was built without CUDA");
#endif
}

#ifdef FTUNE_HAVE_CUDA
namespace {

// The GPU decoder with the context it runs in (declared first: it outlives the decoder).
class OwnedGpuDecoder : public Decoder {
 public:
  OwnedGpuDecoder(const DecoderChoice& c, const LlamaConfig& cfg, const std::string& dir) : dec_(make(c, cfg, dir)) {}
  int64_t vocab_size() const override { return dec_->vocab_size(); }
  std::unique_ptr<KvCache> new_cache(int64_t capacity) override { return dec_->new_cache(capacity); }
  const std::vector<float>& forward(const std::vector<DecodeRow>& rows) override { return dec_->forward(rows); }
  void forget(const LoraParams* a) override { dec_->forget(a); }

 private:
  std::unique_ptr<GpuDecoder> make(const DecoderChoice& c, const LlamaConfig& cfg, const std::string& dir) {
    if (cuda::device_count() == 0) fail("--device gpu: no CUDA GPU is visible");
    GpuDecoderOptions o;
    o.nf4 = c.nf4;
    if (c.dtype == "fp32")
      o.storage = cuda::Storage::F32;
    else if (c.dtype == "fp16" || (c.dtype == "auto" && ctx_.sm_version() < 80))
      o.storage = cuda::Storage::F16;
    const CheckpointReader ckpt(dir);
    const auto src = checkpoint_source(cfg, ckpt);
    auto d = std::make_unique<GpuDecoder>(ctx_, cfg, src.get(), o);
    fmt::print(stderr, "ftune: decoding on {} ({}{}), weights {:.2f} GiB\n", ctx_.name(),
               o.storage == cuda::Storage::F32 ? "fp32" : o.storage == cuda::Storage::F16 ? "fp16" : "bf16",
               o.nf4 ? ", NF4 base" : "", static_cast<double>(d->weight_bytes()) / (1u << 30));
    return d;
  }
  cuda::Context ctx_;
  std::unique_ptr<GpuDecoder> dec_;
};

}  // namespace
#endif

std::unique_ptr<Decoder> make_decoder(const DecoderChoice& c, const LlamaConfig& cfg, const std::string& model_dir,
                                      const LlamaWeights* host) {
  check_decoder_choice(c);
  if (!c.gpu()) return std::make_unique<BatchDecoder>(cfg, *host);
#ifdef FTUNE_HAVE_CUDA
  return std::make_unique<OwnedGpuDecoder>(c, cfg, model_dir);
#else
  (void)model_dir;
  fail("--device gpu: this ftune was built without CUDA");
#endif
}

}  // namespace ftune
