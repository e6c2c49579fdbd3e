# Tokenizer (sentencepiece) and sampler sources of mnemo_model; included from model/CMakeLists.txt.
target_sources(mnemo_model PRIVATE ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cpp ${CMAKE_CURRENT_LIST_DIR}/sampler.cpp)
target_link_libraries(mnemo_model PUBLIC PkgConfig::SentencePiece)
