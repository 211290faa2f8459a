package qtool.cli;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.evaluate.Sampler;
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
            try (Forward f = new Forward(m, b, model.linearType(b, m), 1, maxSeq, false, true, model.ropeAlpha, model.ropeScale)) {
                long t0 = System.nanoTime();
                f.forward(promptIds, 1, promptIds.length, 0);
                int next = sampler.sample(tokenizerLogits(f.logits(promptIds.length - 1), tok));
                long t1 = System.nanoTime();
                int pos = promptIds.length;
                out().print(prompt);
                while (true) {
                    out.add(next);
                    printed = stream(tok, out, printed);
                    if ((next == tok.eos() && !ignoreEos) || out.size() >= tokens || pos >= maxSeq) break;
                    f.forward(new int[] {next}, 1, 1, pos);
                    next = sampler.sample(tokenizerLogits(f.logits(0), tok));
                    pos++;
                }
                long t2 = System.nanoTime();
                out().println();
                if (printIds) out().println(out);
                double prefill = promptIds.length / ((t1 - t0) / 1e9);
                double decode = (out.size() - 1) / Math.max(1e-9, (t2 - t1) / 1e9);
                System.err.printf("prefill %d tokens, %.1f tokens/s; decode %d tokens, %.1f tokens/s (%s)%n", promptIds.length, prefill,
                        out.size() - 1, decode, b.name());
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
