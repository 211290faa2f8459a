package qtool.cli;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.evaluate.Sampler;
import qtool.load.Json;
import qtool.model.Decoder;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/** {@code qtool generate}: streams a continuation of a prompt, then reports prefill and decode speed. */
@Command(name = "generate", mixinStandardHelpOptions = true, description = "Generate text from a prompt.")
public final class GenerateCommand implements Callable<Integer> {
    @picocli.CommandLine.Spec picocli.CommandLine.Model.CommandSpec spec;

    private java.io.PrintWriter out() {
        return spec.commandLine().getOut();
    }

    @Mixin ModelOption model;
    @Mixin DeviceOption device;

    @Option(names = {"-p", "--prompt"}, required = true) String prompt;
    @Option(names = {"-n", "--tokens"}, defaultValue = "128", description = "Tokens to generate (default ${DEFAULT-VALUE}).") int tokens;
    @Option(names = "--greedy", description = "Always take the most likely token.") boolean greedy;
    @Option(names = "--temperature", defaultValue = "0.8") float temperature;
    @Option(names = "--top-p", defaultValue = "0.95") float topP;
    @Option(names = "--seed", defaultValue = "42") long seed;
    @Option(names = "--ctx", description = "Context length (default: the model's max_position_embeddings).") Integer ctx;
    @Option(names = "--no-bos", description = "Do not add BOS even where the tokenizer would.") boolean noBos;
    @Option(names = "--ids", description = "Also print the generated token ids as a JSON array.") boolean printIds;
    @Option(names = "--ignore-eos", description = "Keep generating past the end-of-sequence token.") boolean ignoreEos;
    @Option(names = "--json", description = "Print one JSON object (text, ids, speeds) instead of streaming the text.") boolean json;

    @Override
    public Integer call() {
        try (LlamaModel m = model.open(); Backend b = device.open()) {
            Tokenizer tok = model.tokenizer(m);
            int[] promptIds = tok.encode(prompt, tok.addBosByDefault() && !noBos);
            int context = ctx != null ? ctx : m.config.maxPositionEmbeddings();
            if (promptIds.length == 0) throw new QtoolException("the prompt is empty");
            if (promptIds.length >= context) {
                throw new QtoolException("the prompt is " + promptIds.length + " tokens, the context holds " + context);
            }
            int maxSeq = Math.min(context, promptIds.length + tokens);
            Sampler sampler = greedy ? Sampler.greedy() : new Sampler(temperature, topP, seed);
            List<Integer> out = new ArrayList<>();
            String printed = "";
            Forward.Placement placement = model.placement(b, m, 1, maxSeq);
            try (Forward f = new Forward(m, b, model.linearType(b, m), 1, maxSeq, placement, true, model.ropeAlpha, model.ropeScale);
                 Decoder decoder = new Decoder(f)) {
                long t0 = System.nanoTime();
                f.forward(promptIds, 1, promptIds.length, 0);
                int next = sampler.sample(tokenizerLogits(f.logits(promptIds.length - 1), tok));
                long t1 = System.nanoTime();
                long steady = t1;  // after the first decoding step, which also captures the CUDA graph
                int pos = promptIds.length;
                if (!json) out().print(prompt);
                while (true) {
                    out.add(next);
                    if (!json) printed = stream(tok, out, printed);
                    if ((next == tok.eos() && !ignoreEos) || out.size() >= tokens || pos >= maxSeq) break;
                    next = sampler.sample(tokenizerLogits(decoder.next(next, pos), tok));
                    if (pos++ == promptIds.length) steady = System.nanoTime();
                }
                long t2 = System.nanoTime();
                double prefill = promptIds.length / ((t1 - t0) / 1e9);
                // Steady-state decoding: the steps after the first (one-time costs such as the graph capture stay out,
                // as a warm-up keeps them out of ExLlamaV2's and llama.cpp's figures); all steps when there are few.
                int steps = out.size() - 1;
                double decode = steps > 2 ? (steps - 1) / Math.max(1e-9, (t2 - steady) / 1e9) : steps / Math.max(1e-9, (t2 - t1) / 1e9);
                String mode = (placement.packed() ? "quantized kernels" : "dense weights")
                        + (f.allResident() ? "" : ", " + Math.min(placement.residentLayers(), m.config.numLayers()) + " of "
                                + m.config.numLayers() + " layers resident") + (decoder.graphs() ? ", CUDA graph" : "");
                if (json) {
                    Map<String, Object> o = new LinkedHashMap<>();
                    o.put("model", model.model.toString());
                    o.put("device", b.name());
                    o.put("mode", mode);
                    o.put("prompt_tokens", promptIds.length);
                    o.put("prefill_tokens_per_second", prefill);
                    o.put("generated_tokens", out.size());
                    o.put("decode_tokens_per_second", decode);
                    o.put("text", tok.decode(out.stream().mapToInt(Integer::intValue).toArray()));
                    o.put("ids", out);
                    out().println(Json.write(o));
                } else {
                    out().println();
                    if (printIds) out().println(out);
                }
                System.err.printf("prefill %d tokens, %.1f tokens/s; decode %d tokens, %.1f tokens/s (%s; %s)%n", promptIds.length,
                        prefill, out.size() - 1, decode, b.name(), mode);
            }
            return 0;
        }
    }

    /** Logits of the ids the tokenizer knows: padded embedding rows beyond its vocabulary are never sampled. */
    private static float[] tokenizerLogits(float[] logits, Tokenizer tok) {
        return tok.vocabSize() < logits.length ? java.util.Arrays.copyOf(logits, tok.vocabSize()) : logits;
    }

    /** Prints the part of the decoded text not yet printed; holds back an incomplete UTF-8 sequence. */
    private String stream(Tokenizer tok, List<Integer> ids, String printed) {
        String text = tok.decode(ids.stream().mapToInt(Integer::intValue).toArray());
        if (text.endsWith("\uFFFD") || !text.startsWith(printed)) return printed;
        out().print(text.substring(printed.length()));
        out().flush();
        return text;
    }
}
