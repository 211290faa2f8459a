package qtool.cli;

import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.format.torch.MetaLlamaImporter;
import qtool.load.Json;

/** {@code qtool import-meta}: Meta's original Llama checkpoint directory into an HF model directory. */
@Command(name = "import-meta", mixinStandardHelpOptions = true, sortOptions = false,
        description = "Convert Meta's original Llama download (params.json, tokenizer.model, consolidated.NN.pth) to the HF layout.")
public final class ImportMetaCommand implements Callable<Integer> {
    @picocli.CommandLine.Spec picocli.CommandLine.Model.CommandSpec spec;

    @Option(names = {"-i", "--in"}, required = true, description = "Directory with params.json, tokenizer.model and consolidated.NN.pth.") Path input;
    @Option(names = {"-o", "--out-dir"}, required = true, description = "Output HF model directory.") Path output;
    @Option(names = {"-ss", "--shard-size"}, defaultValue = "8192", description = "Output shard size in MB, 0 = one file (default ${DEFAULT-VALUE}).") long shardMb;
    @Option(names = "--json", description = "Print the summary as one JSON object.") boolean json;

    @Override
    public Integer call() {
        if (shardMb < 0) throw new QtoolException("-ss must be ≥ 0");
        if (input.toAbsolutePath().normalize().equals(output.toAbsolutePath().normalize())) throw new QtoolException("-o must differ from -i");
        MetaLlamaImporter.Result r = MetaLlamaImporter.importDir(input, output, shardMb << 20);
        if (json) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("output", output.toString());
            m.put("shards_in", r.shards());
            m.put("tensors", r.tensors());
            m.put("bytes", r.bytes());
            m.put("intermediate_size", r.params().intermediate());
            spec.commandLine().getOut().println(Json.write(m));
        } else {
            spec.commandLine().getOut().printf("imported %d shard(s), %d tensors (%d bytes), intermediate_size %d → %s%n",
                    r.shards(), r.tensors(), r.bytes(), r.params().intermediate(), output);
        }
        return 0;
    }
}
