// ftune's entry point: subcommand dispatch, and the one place that turns errors into a single
// line on stderr and a non-zero exit.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <unistd.h>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

namespace {
// On a terminal the progress line may be open: end it before the error.
const char* sep() { return isatty(2) ? "\n" : ""; }
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ftune: fine-tune Llama-family models (LoRA) from Hugging Face checkpoints"};
  app.require_subcommand(1);
  ftune::add_train_command(app);
  ftune::add_inspect_command(app);
  ftune::add_init_model_command(app);
  ftune::add_logits_command(app);
  ftune::add_tokenize_command(app);
  ftune::add_data_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ftune::Error& e) {
    fmt::print(stderr, "{}ftune: error: {}\n", sep(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "{}ftune: error: out of host memory\n", sep());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}ftune: internal error: {}\n", sep(), e.what());
    return 2;
  }
  return 0;
}
