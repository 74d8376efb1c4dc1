// BatchPredictionRequest and the structs it carries, written from the wire
// notes in docs (bpr-wire-format.md). Field ids and types are what matter on
// the wire; names follow the original where it is public.
// Used through thriftpy2 by tests, tools and `navi inspect`; never on the hot path.

namespace py navi_bpr

enum FeatureType {
  BINARY = 1,
  CONTINUOUS = 2,
  DISCRETE = 3,
  STRING = 4,
  SPARSE_BINARY = 5,
  SPARSE_CONTINUOUS = 6,
  UNKNOWN = 7,
  BLOB = 8,
  TENSOR = 9,
  SPARSE_TENSOR = 10,
}

enum DataType {
  FLOAT = 0,
  DOUBLE = 1,
  INT32 = 2,
  INT64 = 3,
  UINT8 = 4,
  STRING = 5,
  BYTE = 6,
  BOOL = 7,
}

struct RawTypedTensor {
  1: DataType dataType
  2: binary content
  3: list<i64> shape
}

struct StringTensor {
  1: list<string> strings
  2: list<i64> shape
}

struct Int32Tensor {
  1: list<i32> ints
  2: list<i64> shape
}

struct Int64Tensor {
  1: list<i64> longs
  2: list<i64> shape
}

// Doubles on the wire, although the name says float.
struct FloatTensor {
  1: list<double> floats
  2: list<i64> shape
}

struct DoubleTensor {
  1: list<double> doubles
  2: list<i64> shape
}

struct BoolTensor {
  1: list<bool> booleans
  2: list<i64> shape
}

struct BinaryTensor {
  1: list<binary> binaries
  2: list<i64> shape
}

union GeneralTensor {
  1: RawTypedTensor rawTypedTensor
  2: StringTensor stringTensor
  3: Int32Tensor int32Tensor
  4: Int64Tensor int64Tensor
  5: FloatTensor floatTensor
  6: DoubleTensor doubleTensor
  7: BoolTensor boolTensor
  8: BinaryTensor binaryTensor
}

struct COOSparseTensor {
  1: list<i64> denseShape
  2: Int64Tensor indices
  3: GeneralTensor values
}

union SparseTensor {
  1: COOSparseTensor cooSparseTensor
}

struct DataRecord {
  1: optional set<i64> binaryFeatures
  2: optional map<i64, double> continuousFeatures
  3: optional map<i64, i64> discreteFeatures
  4: optional map<i64, string> stringFeatures
  5: optional map<i64, set<string>> sparseBinaryFeatures
  6: optional map<i64, map<string, double>> sparseContinuousFeatures
  7: optional map<i64, binary> blobFeatures
  8: optional map<i64, GeneralTensor> tensors
  9: optional map<i64, SparseTensor> sparseTensors
}

struct BatchPredictionRequest {
  1: required list<DataRecord> individualFeaturesList
  2: optional DataRecord commonFeatures
}

struct BatchPredictionResponse {
  1: required list<DataRecord> predictions
}
