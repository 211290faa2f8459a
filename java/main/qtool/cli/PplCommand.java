package qtool.cli;

import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import qtool.backend.Backend;
import qtool.evaluate.Perplexity;
import qtool.load.Json;
import qtool.load.TextDataset;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/** {@code qtool ppl}: perplexity of a model on a text, GPTQ-paper protocol (see {@link Perplexity}). */
@Command(name = "ppl", mixinStandardHelpOptions = true, description = "Perplexity over non-overlapping windows of a dataset.")
public final class PplCommand implements Callable<Integer> {
    @picocli.CommandLine.Spec picocli.CommandLine.Model.CommandSpec spec;

    private java.io.PrintWriter out() {
        return spec.commandLine().getOut();
    }

    @Mixin ModelOption model;
    @Mixin DeviceOption device;

    @Option(names = {"-d", "--data"}, required = true, description = "Parquet file (its text column; rows joined with \"\\n\\n\") or raw text file.")
    Path data;

    @Option(names = "--ctx", defaultValue = "2048", description = "Window length in tokens (default ${DEFAULT-VALUE}).")
    int ctx;

    @Option(names = {"--windows", "--rows"}, defaultValue = "0", description = "Evaluate only the first N windows (0 = all).")
    int windows;

    @Option(names = "--batch", defaultValue = "1", description = "Windows per forward pass (default ${DEFAULT-VALUE}).")
    int batch;

    @Option(names = "--protocol", defaultValue = "gptq",
            description = "gptq: every token of each window scored (GPTQ paper); llama.cpp: llama-perplexity's, BOS first in each "
                    + "window when the vocabulary adds it, only the second half scored (compare with llama-perplexity -c CTX "
                    + "--chunks N). Default ${DEFAULT-VALUE}.")
    String protocol;

    @Option(names = "--json", description = "Print the result as one JSON object.")
    boolean json;

    @Override
    public Integer call() {
        if (ctx < 2) throw new qtool.QtoolException("--ctx must be at least 2");
        boolean llamaCpp = switch (protocol.toLowerCase()) {
            case "gptq" -> false;
            case "llama.cpp", "llamacpp", "llama-cpp" -> true;
            default -> throw new picocli.CommandLine.ParameterException(spec.commandLine(), "--protocol must be gptq or llama.cpp, not '" + protocol + "'");
        };
        if (llamaCpp && ctx < 4) throw new qtool.QtoolException("--ctx must be at least 4 under --protocol llama.cpp");
        String text = TextDataset.evaluationText(data);
        try (LlamaModel m = model.open(); Backend b = device.open()) {
            Tokenizer tok = model.tokenizer(m);
            int[] ids = tok.encode(text, tok.addBosByDefault());
            int n = Perplexity.windowCount(ids.length, ctx);
            if (n == 0) throw new qtool.QtoolException(data + ": " + ids.length + " tokens, fewer than one window of --ctx " + ctx);
            int nb = Math.max(1, Math.min(batch, windows > 0 ? Math.min(windows, n) : n));
            Perplexity.Result r;
            try (Forward f = new Forward(m, b, model.linearType(b, m), nb, ctx, model.placement(b, m, nb, ctx), false, model.ropeAlpha,
                    model.ropeScale)) {
                r = llamaCpp ? Perplexity.evaluateLlamaCpp(f, ids, ctx, windows, nb, tok.addBosByDefault() ? tok.bos() : -1)
                        : Perplexity.evaluate(f, ids, ctx, windows, nb);
            }
            if (json) {
                Map<String, Object> o = new LinkedHashMap<>();
                o.put("model", model.model.toString());
                o.put("data", data.toString());
                o.put("device", b.name());
                o.put("protocol", llamaCpp ? "llama.cpp" : "gptq");
                o.put("ctx", ctx);
                o.put("windows", r.windows());
                o.put("tokens_evaluated", (long) r.windows() * ctx);
                o.put("tokens_predicted", r.predicted());
                o.put("nll", r.nll());
                o.put("ppl", r.ppl());
                o.put("seconds", r.seconds());
                o.put("tokens_per_second", r.tokensPerSecond());
                o.put("window_nll_sums", r.nllSums());
                out().println(Json.write(o));
            } else {
                out().printf("tokens evaluated %d (%d windows of %d), ppl %.4f, %.1f tokens/s on %s%n", (long) r.windows() * ctx,
                        r.windows(), ctx, r.ppl(), r.tokensPerSecond(), b.name());
            }
            return 0;
        }
    }
}
