package qtool.load;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.parquet.ParquetReadOptions;
import org.apache.parquet.column.page.PageReadStore;
import org.apache.parquet.conf.PlainParquetConfiguration;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.simple.convert.GroupRecordConverter;
import org.apache.parquet.hadoop.ParquetFileReader;
import org.apache.parquet.io.ColumnIOFactory;
import org.apache.parquet.io.LocalInputFile;
import org.apache.parquet.io.MessageColumnIO;
import org.apache.parquet.io.RecordReader;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.Type;
import qtool.QtoolException;

/**
 * Text for perplexity and calibration: the {@code text} column of a parquet file (read with parquet-hadoop, no
 * Hadoop install: a local input file and a plain configuration), or a raw UTF-8 text file taken whole.
 */
public final class TextDataset {
    private TextDataset() {}

    public static boolean isParquet(Path file) {
        try (InputStream in = Files.newInputStream(file)) {
            byte[] magic = in.readNBytes(4);
            return magic.length == 4 && magic[0] == 'P' && magic[1] == 'A' && magic[2] == 'R' && magic[3] == '1';
        } catch (IOException e) {
            throw new QtoolException(file + ": cannot read: " + e.getMessage());
        }
    }

    /** The rows of a parquet file's {@code column}, or a raw text file as a single row. */
    public static List<String> rows(Path file, String column) {
        if (!Files.isRegularFile(file)) throw new QtoolException(file + ": no such file");
        if (!isParquet(file)) {
            try {
                return List.of(Files.readString(file, StandardCharsets.UTF_8));
            } catch (IOException e) {
                throw new QtoolException(file + ": cannot read as UTF-8 text: " + e.getMessage());
            }
        }
        try (ParquetFileReader reader = ParquetFileReader.open(new LocalInputFile(file),
                ParquetReadOptions.builder(new PlainParquetConfiguration()).build())) {
            MessageType schema = reader.getFooter().getFileMetaData().getSchema();
            if (!schema.containsField(column)) {
                List<String> names = schema.getFields().stream().map(Type::getName).toList();
                throw new QtoolException(file + ": no '" + column + "' column (columns: " + String.join(", ", names) + ")");
            }
            MessageType projection = new MessageType(schema.getName(), schema.getType(column));
            reader.setRequestedSchema(projection);
            MessageColumnIO io = new ColumnIOFactory().getColumnIO(projection, schema);
            List<String> rows = new ArrayList<>();
            PageReadStore group;
            while ((group = reader.readNextRowGroup()) != null) {
                RecordReader<Group> records = io.getRecordReader(group, new GroupRecordConverter(projection));
                for (long i = 0, n = group.getRowCount(); i < n; i++) {
                    Group g = records.read();
                    rows.add(g.getFieldRepetitionCount(0) == 0 ? "" : g.getString(0, 0));
                }
            }
            return rows;
        } catch (IOException | RuntimeException e) {
            if (e instanceof QtoolException q) throw q;
            throw new QtoolException(file + ": cannot read parquet: " + e.getMessage());
        }
    }

    /** The evaluation text: parquet rows joined with "\n\n" (the GPTQ paper's protocol), or a raw file as is. */
    public static String evaluationText(Path file) {
        List<String> rows = rows(file, "text");
        String text = String.join("\n\n", rows);
        if (text.isBlank()) throw new QtoolException(file + ": the dataset holds no text");
        return text;
    }
}
