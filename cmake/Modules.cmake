# duquant_module(NAME SOURCES file... [PUBLIC dep...] [PRIVATE dep...]): one folder of the
# architecture (docs/architecture.md) as a static library `duquant_NAME`. Its headers live in
# `include/NAME/` beside the sources and are included as "NAME/header.hpp"; that folder is the only
# include root it gives to its users. A dependency is PUBLIC when the module's headers include the
# other module's headers, PRIVATE when only its sources do: a module that does not link another
# cannot find that module's headers, so an include across a forbidden edge fails to compile
# (tests/layering checks that it does).
function(duquant_module name)
  cmake_parse_arguments(M "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(duquant_${name} STATIC ${M_SOURCES})
  target_include_directories(duquant_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(duquant_${name} PUBLIC ${M_PUBLIC} PRIVATE ${M_PRIVATE})
  set_property(TARGET duquant_${name} PROPERTY DUQUANT_MODULE_DEPS ${M_PUBLIC} ${M_PRIVATE})
endfunction()
