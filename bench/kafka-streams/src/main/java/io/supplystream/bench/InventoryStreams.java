package io.supplystream.bench;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.management.ManagementFactory;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.stream.Collectors;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The inventory fold as a Kafka Streams user would write it: per-sku stock by warehouse in one
 * RocksDB store, each reservation (open, or spent: a reservation id acts once) in another keyed
 * {@code <sku>/<id>}, as ours keeps them; both with their changelogs (and the default record
 * cache), exactly_once_v2, one output record per command. It reads the same
 * Confluent-framed Avro commands as our pipeline (writer schemas from the registry, parsed
 * once per id) and writes a short text outcome per command (not Avro: it does less per record
 * than ours, which encodes and registers Avro events).
 *
 * <p>Runs from its start until its group's committed offsets reach the input's ends, then
 * prints one line: {@code peer threads=N records=R elapsed_ms=E cpu_ms=C} and exits.
 *
 * <p>Arguments: input topic, output topic, stream threads. Environment: SUPPLYSTREAM_BROKERS,
 * SUPPLYSTREAM_REGISTRY (the registry's Confluent API base URL).
 */
public final class InventoryStreams {
  public static void main(String[] args) throws Exception {
    String brokers = System.getenv("SUPPLYSTREAM_BROKERS");
    String registry = System.getenv("SUPPLYSTREAM_REGISTRY");
    if (brokers == null || registry == null || args.length != 3) {
      System.err.println(
          "usage: SUPPLYSTREAM_BROKERS=… SUPPLYSTREAM_REGISTRY=… InventoryStreams <input> <output> <threads>");
      System.exit(2);
    }
    String input = args[0];
    String output = args[1];
    int threads = Integer.parseInt(args[2]);
    String app = "bench-streams-" + threads + "-" + ProcessHandle.current().pid();

    Properties admin = new Properties();
    admin.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    try (Admin a = Admin.create(admin)) {
      int partitions =
          a.describeTopics(List.of(input)).allTopicNames().get().get(input).partitions().size();
      if (!a.listTopics().names().get().contains(output)) {
        a.createTopics(List.of(new NewTopic(output, partitions, (short) 1))).all().get();
      }
    }

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
    p.put(
        StreamsConfig.STATE_DIR_CONFIG,
        Files.createTempDirectory("bench-streams-state").toString());
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

    StreamsBuilder builder = new StreamsBuilder();
    builder.addStateStore(
        Stores.keyValueStoreBuilder(
            Stores.persistentKeyValueStore("skus"), Serdes.String(), new SkuStateSerde()));
    builder.addStateStore(
        Stores.keyValueStoreBuilder(
            Stores.persistentKeyValueStore("reservations"), Serdes.String(), Serdes.String()));
    Schemas schemas = new Schemas(registry);
    builder.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .process(() -> new Fold(schemas), "skus", "reservations")
        .to(output, Produced.with(Serdes.String(), Serdes.String()));

    long cpuBefore = cpuNanos();
    long started = System.nanoTime();
    KafkaStreams streams = new KafkaStreams(builder.build(), p);
    streams.setUncaughtExceptionHandler(
        e -> {
          e.printStackTrace();
          System.exit(1);
          return null;
        });
    streams.start();
    long records = waitCaughtUp(brokers, app, input);
    long elapsedMs = (System.nanoTime() - started) / 1_000_000;
    long cpuMs = (cpuNanos() - cpuBefore) / 1_000_000;
    streams.close(Duration.ofSeconds(30));
    System.out.printf(
        "peer threads=%d records=%d elapsed_ms=%d cpu_ms=%d%n", threads, records, elapsedMs, cpuMs);
  }

  static long cpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
        .getProcessCpuTime();
  }

  /** Polls the group's committed offsets (every 50 ms) until they reach the input's ends. */
  static long waitCaughtUp(String brokers, String group, String input) throws Exception {
    Properties admin = new Properties();
    admin.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    try (Admin a = Admin.create(admin)) {
      int partitions =
          a.describeTopics(List.of(input)).allTopicNames().get().get(input).partitions().size();
      Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
      for (int i = 0; i < partitions; i++) {
        latest.put(new TopicPartition(input, i), OffsetSpec.latest());
      }
      Map<TopicPartition, Long> ends =
          a.listOffsets(latest, new ListOffsetsOptions(IsolationLevel.READ_COMMITTED)).all().get()
              .entrySet().stream()
              .collect(Collectors.toMap(Map.Entry::getKey, e -> e.getValue().offset()));
      long total = ends.values().stream().mapToLong(Long::longValue).sum();
      while (true) {
        Map<TopicPartition, OffsetAndMetadata> committed =
            a.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
        boolean done =
            ends.entrySet().stream()
                .allMatch(
                    e -> {
                      OffsetAndMetadata c = committed.get(e.getKey());
                      // Past the end: the commit after the last record steps over its marker.
                      return e.getValue() == 0 || (c != null && c.offset() >= e.getValue());
                    });
        if (done) {
          return total;
        }
        Thread.sleep(50);
      }
    }
  }

  /** Writer schemas by registry id, each fetched and parsed once; one reader per id. */
  static final class Schemas {
    private final String registry;
    private final HttpClient http = HttpClient.newHttpClient();
    private final ObjectMapper json = new ObjectMapper();
    private final Map<Integer, GenericDatumReader<GenericRecord>> readers =
        new ConcurrentHashMap<>();

    Schemas(String registry) {
      this.registry = registry.replaceAll("/+$", "");
    }

    GenericDatumReader<GenericRecord> reader(int id) {
      return readers.computeIfAbsent(id, this::fetch);
    }

    private GenericDatumReader<GenericRecord> fetch(int id) {
      try {
        HttpRequest req =
            HttpRequest.newBuilder(URI.create(registry + "/schemas/ids/" + id))
                .timeout(Duration.ofSeconds(10))
                .build();
        HttpResponse<String> res = http.send(req, HttpResponse.BodyHandlers.ofString());
        if (res.statusCode() != 200) {
          throw new IllegalStateException("schema id " + id + ": HTTP " + res.statusCode());
        }
        String text = json.readTree(res.body()).get("schema").asText();
        return new GenericDatumReader<>(new Schema.Parser().parse(text));
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException(e);
      }
    }
  }

  /** One sku's stock: warehouse → {on hand, reserved}, and its version. */
  static final class SkuState {
    final Map<String, long[]> positions = new HashMap<>();
    long version = -1;

    long[] at(String warehouse) {
      return positions.computeIfAbsent(warehouse, w -> new long[2]);
    }
  }

  /** Decodes a command, folds it into its sku's state, forwards one outcome. */
  static final class Fold implements Processor<String, byte[], String, String> {
    private final Schemas schemas;
    private ProcessorContext<String, String> context;
    private KeyValueStore<String, SkuState> store;
    /** {@code <sku>/<id>} → "open <warehouse> <quantity>" or "spent". */
    private KeyValueStore<String, String> reservations;
    private BinaryDecoder decoder;

    Fold(Schemas schemas) {
      this.schemas = schemas;
    }

    @Override
    public void init(ProcessorContext<String, String> context) {
      this.context = context;
      this.store = context.getStateStore("skus");
      this.reservations = context.getStateStore("reservations");
    }

    @Override
    public void process(Record<String, byte[]> record) {
      byte[] payload = record.value();
      if (payload == null || payload.length < 5 || payload[0] != 0) {
        context.forward(record.withValue("malformed"));
        return;
      }
      int id =
          ((payload[1] & 0xff) << 24)
              | ((payload[2] & 0xff) << 16)
              | ((payload[3] & 0xff) << 8)
              | (payload[4] & 0xff);
      GenericRecord command;
      try {
        decoder = DecoderFactory.get().binaryDecoder(payload, 5, payload.length - 5, decoder);
        command = schemas.reader(id).read(null, decoder);
      } catch (IOException e) {
        context.forward(record.withValue("malformed: " + e.getMessage()));
        return;
      }
      String sku = command.get("sku").toString();
      SkuState s = store.get(sku);
      if (s == null) {
        s = new SkuState();
      }
      String outcome = decide(s, sku, command);
      s.version++;
      store.put(sku, s);
      context.forward(record.withKey(sku).withValue(outcome + " " + sku + " v" + s.version));
    }

    String decide(SkuState s, String sku, GenericRecord c) {
      String name = c.getSchema().getName();
      switch (name) {
        case "ReceiveStock" -> {
          s.at(str(c, "warehouse"))[0] += num(c, "quantity");
          return "InventoryReceived";
        }
        case "ReserveStock" -> {
          String key = sku + "/" + str(c, "reservation_id");
          long q = num(c, "quantity");
          String warehouse = str(c, "warehouse");
          long[] at = s.at(warehouse);
          if (reservations.get(key) != null) {
            return "ReservationRejected duplicate";
          }
          if (at[0] - at[1] < q) {
            reservations.put(key, "spent");
            return "ReservationRejected insufficient";
          }
          at[1] += q;
          reservations.put(key, "open " + warehouse + " " + q);
          return "InventoryReserved";
        }
        case "ReleaseReservation" -> {
          String key = sku + "/" + str(c, "reservation_id");
          String r = reservations.get(key);
          if (r == null || !r.startsWith("open ")) {
            return "InventoryCommandRejected unknown reservation";
          }
          String[] parts = r.split(" ");
          s.at(parts[1])[1] -= Long.parseLong(parts[2]);
          reservations.put(key, "spent");
          return "InventoryReleased";
        }
        case "AdjustStock" -> {
          long[] at = s.at(str(c, "warehouse"));
          long after = at[0] + num(c, "delta");
          if (after < at[1]) {
            return "InventoryCommandRejected below reserved";
          }
          at[0] = after;
          return "InventoryAdjusted";
        }
        case "TransferStock" -> {
          long q = num(c, "quantity");
          long[] from = s.at(str(c, "from_warehouse"));
          if (from[0] - from[1] < q) {
            return "InventoryCommandRejected insufficient";
          }
          from[0] -= q;
          s.at(str(c, "to_warehouse"))[0] += q;
          return "InventoryTransferred";
        }
        case "AuditStock" -> {
          long[] at = s.at(str(c, "warehouse"));
          long counted = num(c, "counted");
          if (counted < at[1]) {
            return "InventoryCommandRejected below reserved";
          }
          at[0] = counted;
          return "InventoryAudited";
        }
        default -> {
          return "InventoryCommandRejected unknown command " + name;
        }
      }
    }

    static String str(GenericRecord c, String field) {
      return c.get(field).toString();
    }

    static long num(GenericRecord c, String field) {
      return (Long) c.get(field);
    }
  }

  /** The state as bytes for RocksDB and its changelog. */
  static final class SkuStateSerde implements Serde<SkuState> {
    @Override
    public Serializer<SkuState> serializer() {
      return (topic, s) -> {
        try {
          ByteArrayOutputStream bytes = new ByteArrayOutputStream(64);
          DataOutputStream out = new DataOutputStream(bytes);
          out.writeLong(s.version);
          out.writeInt(s.positions.size());
          for (Map.Entry<String, long[]> e : s.positions.entrySet()) {
            out.writeUTF(e.getKey());
            out.writeLong(e.getValue()[0]);
            out.writeLong(e.getValue()[1]);
          }
          return bytes.toByteArray();
        } catch (IOException e) {
          throw new UncheckedIOException(e);
        }
      };
    }

    @Override
    public Deserializer<SkuState> deserializer() {
      return (topic, data) -> {
        if (data == null) {
          return null;
        }
        try {
          DataInputStream in = new DataInputStream(new ByteArrayInputStream(data));
          SkuState s = new SkuState();
          s.version = in.readLong();
          for (int i = in.readInt(); i > 0; i--) {
            s.positions.put(in.readUTF(), new long[] {in.readLong(), in.readLong()});
          }
          return s;
        } catch (IOException e) {
          throw new UncheckedIOException(e);
        }
      };
    }
  }

}
