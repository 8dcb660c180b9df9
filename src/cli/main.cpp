// ftune's entry point: subcommand dispatch, and the one place that turns errors into a single
// line on stderr and a non-zero exit.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"ftune: fine-tune Llama-family models (LoRA) from Hugging Face checkpoints"};
  app.require_subcommand(1);
  ftune::add_train_command(app);
  ftune::add_inspect_command(app);
  ftune::add_init_model_command(app);
  ftune::add_logits_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ftune::Error& e) {
    fmt::print(stderr, "\nftune: error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "\nftune: error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "\nftune: internal error: {}\n", e.what());
    return 2;
  }
  return 0;
}
