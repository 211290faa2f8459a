package qtool.load;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.Shared;

class TextDatasetTest {
    @Test
    void readsWikitextParquetRows() {
        List<String> rows = TextDataset.rows(Shared.require("data/wikitext-2-raw-v1_test.parquet"), "text");
        assertEquals(4358, rows.size());
        assertEquals("", rows.get(0));
        assertTrue(rows.get(1).contains("Robert Boulter"), rows.get(1));
    }

    @Test
    void parquetWithoutTextColumnListsColumns() {
        Path cal = Shared.require("data/calibration-mix.parquet");
        QtoolException e = assertThrows(QtoolException.class, () -> TextDataset.rows(cal, "content"));
        assertTrue(e.getMessage().contains("columns: text, source"), e.getMessage());
    }

    @Test
    void rawTextIsOneRow(@TempDir Path dir) throws Exception {
        Path f = dir.resolve("a.txt");
        Files.writeString(f, "hello\n\nworld");
        assertEquals(List.of("hello\n\nworld"), TextDataset.rows(f, "text"));
        Files.writeString(f, "  \n");
        assertThrows(QtoolException.class, () -> TextDataset.evaluationText(f));
    }
}
