package qtool.cli;

import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.format.torch.GptqPtImporter;

/** {@code qtool import-gptq-pt}: a GPTQ-for-LLaMa .pt checkpoint into a GPTQ directory. */
@Command(name = "import-gptq-pt", mixinStandardHelpOptions = true, sortOptions = false,
        description = "Convert a GPTQ-for-LLaMa .pt checkpoint into a GPTQ directory (AutoGPTQ layout) that qtool and other loaders read.")
public final class ImportGptqPtCommand implements Callable<Integer> {
    @picocli.CommandLine.Spec picocli.CommandLine.Model.CommandSpec spec;

    @Option(names = {"-i", "--in"}, required = true, description = "The .pt / .pth checkpoint (torch.save zip format).") Path input;
    @Option(names = {"-o", "--out-dir"}, required = true, description = "Output GPTQ directory.") Path output;
    @Option(names = "--config", required = true, description = "The HF model directory it was quantized from (config.json, tokenizer).") Path config;
    @Option(names = "--bits", required = true, description = "Bits it was quantized with: 2, 3, 4 or 8.") int bits;
    @Option(names = "--group-size", required = true, description = "Group size it was quantized with, -1 for none.") int groupSize;
    @Option(names = {"-ss", "--shard-size"}, defaultValue = "8192", description = "Output shard size in MB, 0 = one file (default ${DEFAULT-VALUE}).") long shardMb;

    @Override
    public Integer call() {
        if (shardMb < 0) throw new QtoolException("-ss must be ≥ 0");
        GptqPtImporter.Result r = GptqPtImporter.importFile(input, bits, groupSize, config, output, shardMb << 20);
        spec.commandLine().getOut().printf("imported %d quantized linears (%d-bit, group size %d%s) → %s%n",
                r.quantizedLinears(), bits, groupSize, r.descAct() ? ", act-order" : "", output);
        return 0;
    }
}
