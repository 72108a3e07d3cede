// (being written)
namespace duquant {}
