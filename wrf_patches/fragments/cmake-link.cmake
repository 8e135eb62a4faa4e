target_include_directories( ${PROJECT_NAME}_Core PRIVATE @CMAKE_INCLUDE_DIRS@ )
target_link_libraries( ${PROJECT_NAME}_Core PUBLIC @CMAKE_LINK@ )
